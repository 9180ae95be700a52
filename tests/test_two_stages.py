"""Train once, evaluate and predict many times (issue 31): training keys shared across studies, the
selected weights logged with the training, ``evaluate`` under another protocol without training,
``predict`` on a real CT."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from benchmarks.cli import main
from benchmarks.config import PROJECT_ROOT, load_profile, load_study
from benchmarks.data import read_case
from benchmarks.evaluation import evaluate, summarize
from benchmarks.metrics import get_protocol
from benchmarks.plan import StudyPlan
from benchmarks.weights import load_trained, log_weights
from methods import list_methods

REAL_CT = PROJECT_ROOT.parent / "shared" / "realdata" / "ts_example_ct.nii.gz"


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments, run_view_type=ViewType.ALL) if "run_key" in r.data.tags]


def _run(study: str, cohort: Path, *extra: str) -> None:
    assert main([*extra[:1], study, "--profile", "smoke", "--data", str(cohort), "--no-progress", *extra[1:]]) == 0


@pytest.mark.parametrize("name", list_methods())
def test_logged_weights_rebuild_the_same_predictions(name: str, tiny_cohort: Path, mlflow_store: str) -> None:
    """Every method: weights moved away from their initialisation, logged, rebuilt from the artifact
    alone: the same logits (a fresh build of the method, or a missing module, would differ)."""
    plan = StudyPlan(load_study("table2"), load_profile("smoke"), [name], data_dir=tiny_cohort, progress=False)
    cell = plan.cell(name, 0)
    torch.manual_seed(1)
    method = cell.build_method()
    with torch.no_grad():
        for module in method.inference_modules().values():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    client = MlflowClient(mlflow_store)
    run_id = client.create_run(client.create_experiment("w")).info.run_id
    log_weights(client, run_id, method, cell, (16, 16, 16))
    torch.manual_seed(2)
    rebuilt = load_trained(client, run_id)
    x = torch.rand(1, 1, *cell.profile.patch)
    assert rebuilt.record["method"] == name and rebuilt.record["training_key"] == cell.training_key
    torch.testing.assert_close(rebuilt.method.predict(x), method.predict(x), rtol=0, atol=0)


def test_table2_tak_and_lambda_c_0_1_share_one_training(tiny_cohort: Path, mlflow_store: str) -> None:
    """The ablation's lambda_c = 0.1 entry is TAK's default: its cell is evaluated from Table 2's
    training (one run trained, with the weights; the other records the evaluation and points at it)."""
    _run("table2", tiny_cohort, "run", "--methods", "tak")
    _run("ablation-lambda-c", tiny_cohort, "run", "--methods", "tak-lc0.1")
    runs = _runs(mlflow_store)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    trained = [r for r in runs if r.data.tags["stage"] == "training+evaluation"]
    evaluated = [r for r in runs if r.data.tags["stage"] == "evaluation"]
    assert len(trained) == 1 and len(evaluated) == 1
    assert evaluated[0].data.tags["training_run_id"] == trained[0].info.run_id
    assert evaluated[0].data.tags["training_key"] == trained[0].data.tags["training_key"]
    assert evaluated[0].data.tags["run_key"] != trained[0].data.tags["run_key"]  # two studies, two evaluations
    assert not any(k.startswith("train/") for k in evaluated[0].data.metrics)  # no iteration ran
    assert evaluated[0].data.metrics["test/dice_mean"] == trained[0].data.metrics["test/dice_mean"]


def test_evaluate_under_another_protocol_trains_nothing(tiny_cohort: Path, mlflow_store: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    """``evaluate --protocol native`` after a ``dhc`` training: a new evaluation run, no training
    iteration, and metrics equal to those computed from the logged weights directly."""
    _run("table2", tiny_cohort, "run", "--methods", "supervised")
    _run("table2", tiny_cohort, "evaluate", "--methods", "supervised", "--protocol", "native")
    assert "1 evaluation(s) recorded" in capsys.readouterr().out
    runs = {r.data.tags["protocol"]: r for r in _runs(mlflow_store)}
    assert set(runs) == {"dhc", "native"}
    native = runs["native"]
    assert native.data.tags["stage"] == "evaluation" and native.data.tags["training_run_id"] == runs["dhc"].info.run_id
    assert not any(k.startswith("train/") for k in native.data.metrics)
    model = load_trained(MlflowClient(mlflow_store), runs["dhc"].info.run_id)
    plan = StudyPlan(load_study("table2"), load_profile("smoke"), ["supervised"], data_dir=tiny_cohort, progress=False)
    cases = [read_case(plan.dataset, i) for i in plan.test_ids()]
    direct = summarize(evaluate(model.method, cases, plan.dataset, plan.profile.patch, plan.profile.eval_stride,
                                get_protocol("native")), plan.dataset)
    for key in ("test/dice_mean", "test/dice_small", "test/asd_mean", "test/nsd_mean"):
        assert native.data.metrics[key] == pytest.approx(direct[key], rel=0, abs=1e-9), key
    _run("table2", tiny_cohort, "evaluate", "--methods", "supervised", "--protocol", "native")
    assert "0 evaluation(s) recorded, 1 already recorded" in capsys.readouterr().out


def test_mlflow_shows_model_development_runs_with_their_dataset_and_model(tiny_cohort: Path,
                                                                          mlflow_store: str) -> None:
    """What the MLflow UI reads: the experiment marked as model development (its runs view, not the
    GenAI traces view), the data as the run's dataset input, the selected weights as its model."""
    _run("table2", tiny_cohort, "run", "--methods", "supervised")
    _run("table2", tiny_cohort, "evaluate", "--methods", "supervised", "--protocol", "native")
    client = MlflowClient(mlflow_store)
    assert client.get_experiment_by_name("table2").tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.data.tags["stage"]: client.get_run(r.info.run_id) for r in _runs(mlflow_store)}
    trained, evaluated = runs["training+evaluation"], runs["evaluation"]
    for run in (trained, evaluated):
        (data,) = run.inputs.dataset_inputs
        assert data.dataset.digest == run.data.tags["data_digest"][:16] and data.dataset.name == "synthetic-amos"
    model_id = trained.data.tags["model_id"]
    assert [m.model_id for m in trained.outputs.model_outputs] == [model_id]
    assert [m.model_id for m in evaluated.inputs.model_inputs] == [model_id]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == trained.info.run_id and model.name == "supervised" and model.status == "READY"


def test_evaluate_without_a_training_trains_nothing(tiny_cohort: Path, mlflow_store: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    _run("table2", tiny_cohort, "evaluate", "--methods", "supervised")
    out = capsys.readouterr().out
    assert "[untrained] supervised seed 0" in out and "1 cell(s) without a training" in out
    assert _runs(mlflow_store) == []


@pytest.mark.skipif(not REAL_CT.is_file(), reason="../shared/realdata is absent")
def test_predict_writes_a_label_map_on_the_input_grid(tiny_cohort: Path, mlflow_store: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """A smoke-trained run applied to the real CT: a uint8 label map with the input's shape and affine;
    the input untouched, an existing output refused without --overwrite."""
    _run("table2", tiny_cohort, "run", "--methods", "supervised")
    run_id = _runs(mlflow_store)[0].info.run_id
    before = REAL_CT.read_bytes()
    out = tmp_path / "seg" / "ct_seg.nii.gz"
    assert main(["predict", run_id, "--in", str(REAL_CT), "--out", str(out)]) == 0
    image, seg = nib.load(str(REAL_CT)), nib.load(str(out))
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
    assert seg.get_data_dtype() == np.uint8 and int(np.asarray(seg.dataobj).max()) < 16
    assert REAL_CT.read_bytes() == before
    assert main(["predict", run_id, "--in", str(REAL_CT), "--out", str(out)]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err


def test_fig4_renders_under_smoke_from_the_logged_weights(tiny_cohort: Path, mlflow_store: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """``figure fig4`` under smoke (no predictions kept): the median and worst small-organ cases of the
    reference, a slice each, every method's label map predicted again from its logged weights."""
    import pandas as pd
    _run("table2", tiny_cohort, "run", "--methods", "supervised,mean_teacher")
    out = tmp_path / "fig4"
    assert main(["figure", "fig4", "--study", "table2", "--profile", "smoke", "--data", str(tiny_cohort),
                 "--reference", "supervised", "--out", str(out)]) == 0
    assert (out / "fig4.png").stat().st_size > 10_000
    table = pd.read_csv(out / "fig4.csv")
    assert [w.split()[0] for w in table["why"]] == ["median", "worst"]
    assert table["methods"].iloc[0].split(";") == ["V-Net (labeled only)", "Mean Teacher"]
    assert all(0 <= z < 16 for z in table["z"])
