"""The real abdominal CT of ../shared/realdata through the real-data pipeline: prepare (reorient,
remap, resample), read, sliding-window inference of a trained smoke model, metrics."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.data import load_dataset, read_case, read_split
from benchmarks.data.prepare import prepare_amos, prepare_case
from benchmarks.errors import DatasetError
from benchmarks.evaluation import predict_case
from benchmarks.metrics import PROTOCOLS, evaluate_case
from benchmarks.training import TwoStreamSampler, seed_everything, train
from methods import get_method

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
CT, LABEL = REALDATA / "ts_example_ct.nii.gz", REALDATA / "ts_example_ct_label_amos15.nii.gz"
pytestmark = pytest.mark.skipif(not CT.is_file(), reason="../shared/realdata is absent (real CT not available)")
DEFINITION = Path(__file__).resolve().parents[1] / "datasets" / "amos"


def centroid_x(label: np.ndarray, class_id: int) -> float:
    return float(np.argwhere(label == class_id)[:, 0].mean())


def test_prepare_case_reorients_remaps_and_resamples() -> None:
    image, label, spacing = prepare_case(CT, LABEL, "ga")
    assert image.shape == label.shape == (160, 160, 80)
    present = set(np.unique(label).tolist()) - {0}
    assert present == set(range(1, 16)) - {5}  # 14 organs; the esophagus is absent in this CT
    # harness axes: x toward the patient's left, so the liver (right) lies at lower x than the spleen
    assert centroid_x(label, 6) < centroid_x(label, 1)
    assert spacing[0] == pytest.approx(3.0 * 122 / 160) and spacing[2] == pytest.approx(3.0 * 112 / 80)
    assert -1100 < image.min() and image.max() < 3500


@pytest.fixture(scope="module")
def prepared_real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AMOS-layout release holding the real CT under three ids, prepared with the GA protocol."""
    root = tmp_path_factory.mktemp("real")
    src, definition = root / "src", root / "definition"
    for part in ("imagesTr", "labelsTr", "imagesVa", "labelsVa"):
        (src / part).mkdir(parents=True)
    (definition / "splits").mkdir(parents=True)
    shutil.copy(DEFINITION / "dataset.json", definition / "dataset.json")
    for case_id, part, split in (("amos_9001", "Tr", "train"), ("amos_9002", "Tr", "eval"), ("amos_9003", "Va", "test")):
        shutil.copy(CT, src / f"images{part}" / f"{case_id}.nii.gz")
        shutil.copy(LABEL, src / f"labels{part}" / f"{case_id}.nii.gz")
        (definition / "splits" / f"{split}.txt").write_text(case_id + "\n")
    return prepare_amos(src, root / "prepared", definition, "ga")


def test_prepared_dataset_reads_and_windows(prepared_real: Path) -> None:
    info = load_dataset(prepared_real)
    meta = json.loads((prepared_real / "dataset.json").read_text())
    assert meta["preprocessing"] == "ga" and info.intensity_norm == "fixed" and not info.synthetic
    assert read_split(info, "test") == ["amos_9003"]
    case = read_case(info, "amos_9003")
    assert case.image.shape == (160, 160, 80) and 0.0 <= case.image.min() and case.image.max() <= 1.0
    mtime = (prepared_real / "imagesTr" / "amos_9001_0000.nii.gz").stat().st_mtime
    prepare_amos(prepared_real.parent / "src", prepared_real, prepared_real.parent / "definition", "ga")
    assert (prepared_real / "imagesTr" / "amos_9001_0000.nii.gz").stat().st_mtime == mtime  # cached


def test_trained_smoke_model_on_real_ct(prepared_real: Path, tiny_cohort: Path) -> None:
    seed_everything(0)
    synthetic = load_dataset(tiny_cohort)
    labeled = [read_case(synthetic, i) for i in read_split(synthetic, "labeled_5p")]
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=4, dropout=False), 16, max_iterations=4)
    train(method, TwoStreamSampler(labeled, [], 2, 2, (32, 32, 32), 0, "labeled_only"), 4, progress=False)
    case = read_case(load_dataset(prepared_real), "amos_9003")
    pred = predict_case(method, case, (32, 32, 32), (16, 16, 16))
    assert pred.shape == case.label.shape and pred.dtype == np.uint8 and pred.max() < 16
    dices, asds = evaluate_case(pred, case.label, 16, PROTOCOLS["dhc"], case.spacing)
    assert np.isfinite(dices).all() and np.isfinite(asds).all() and ((0 <= dices) & (dices <= 100)).all()
    dices, asds = evaluate_case(pred, case.label, 16, PROTOCOLS["native"], case.spacing)
    esophagus = 4
    assert np.isnan(dices[esophagus]) and np.isnan(asds[esophagus])  # GT empty -> excluded
    assert np.isfinite(np.delete(dices, esophagus)).all()


def test_prepare_names_missing_cases(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(DatasetError, match="not found.*amos_0001"):
        prepare_amos(tmp_path, tmp_path / "out", DEFINITION, "ga")


def test_synapse_release_is_prepared_under_the_dhc_protocol(tmp_path: Path) -> None:
    """The BTCV layout (img/imgNNNN, label/labelNNNN) with the real CT as every case; the DHC
    protocol halves the in-plane size and keeps the depth."""
    from benchmarks.data.prepare import prepare_release
    definition = Path(__file__).resolve().parents[1] / "datasets" / "synapse"
    ids = {i for n in ("train", "eval", "test") for i in (definition / "splits" / f"{n}.txt").read_text().split()}
    btcv = REALDATA / "ts_example_ct_label_btcv13.nii.gz"
    for sub in ("img", "label"):
        (tmp_path / "src" / sub).mkdir(parents=True)
    for case_id in sorted(ids)[:29]:  # one case missing
        number = case_id.removeprefix("synapse_")
        (tmp_path / "src" / "img" / f"img{number}.nii.gz").symlink_to(CT)
        (tmp_path / "src" / "label" / f"label{number}.nii.gz").symlink_to(btcv)
    with pytest.raises(DatasetError, match="1 case.*synapse_0040"):
        prepare_release("synapse", tmp_path / "src", tmp_path / "out", definition, "dhc")
    (tmp_path / "src" / "img" / "img0040.nii.gz").symlink_to(CT)
    (tmp_path / "src" / "label" / "label0040.nii.gz").symlink_to(btcv)
    info = load_dataset(prepare_release("synapse", tmp_path / "src", tmp_path / "out", definition, "dhc"))
    case = read_case(info, "synapse_0004")
    assert case.image.shape == (61, 50, 112) and info.intensity_norm == "minmax"
    assert case.image.min() == 0.0 and case.image.max() == 1.0
    assert info.num_classes == 14 and (case.label == 10).any()  # portal & splenic veins


@pytest.fixture(scope="module")
def prepared_study_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CT as a tiny AMOS-format release with every split a study reads: labeled 9001,
    unlabeled 9004 (train = both), eval 9002, test 9003; prepared under the GA protocol."""
    root = tmp_path_factory.mktemp("paper-path")
    src, definition = root / "src", root / "definition"
    for part in ("imagesTr", "labelsTr", "imagesVa", "labelsVa"):
        (src / part).mkdir(parents=True)
    (definition / "splits").mkdir(parents=True)
    shutil.copy(DEFINITION / "dataset.json", definition / "dataset.json")
    splits = {"labeled_5p": ["amos_9001"], "unlabeled_5p": ["amos_9004"], "train": ["amos_9001", "amos_9004"],
              "eval": ["amos_9002"], "test": ["amos_9003"]}
    for case_id, part in (("amos_9001", "Tr"), ("amos_9004", "Tr"), ("amos_9002", "Tr"), ("amos_9003", "Va")):
        shutil.copy(CT, src / f"images{part}" / f"{case_id}.nii.gz")
        shutil.copy(LABEL, src / f"labels{part}" / f"{case_id}.nii.gz")
    for name, ids in splits.items():
        (definition / "splits" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return prepare_amos(src, root / "prepared", definition, "ga")


def test_paper_path_on_the_real_ct(prepared_study_release: Path, tmp_path: Path, mlflow_store: str) -> None:
    """The paper profile, reduced to a 32^3 patch, 4 filters, 4 iterations and the CPU: best_on_eval
    selection, in-plane flips and fp32 (bf16 is emulated on CPUs without it and makes this 160x160x80
    case slow; test_selection trains supervised, DHC and TAK under bf16); it trains, selects on the eval case,
    evaluates the test case and renders a table whose header names the three choices."""
    import dataclasses

    import mlflow

    from benchmarks.config import load_profile, load_study
    from benchmarks.plan import StudyPlan
    from benchmarks.runner import StudyRunner
    from reports.tables import render_dice_tables
    profile = dataclasses.replace(load_profile("paper"), patch=(32, 32, 32), eval_stride=(32, 32, 16), device="cpu",
                                  precision="fp32", checkpoint_every=0,
                                  method_overrides={"base_filters": 4, "dropout": False, "cube_grid": (2, 1, 1)})
    raw = {**vars(load_study("table2"))}
    study = dataclasses.replace(load_study("table2"), methods=["mean_teacher"],
                                budget={**raw["budget"], "paper": 4}, seeds={**raw["seeds"], "paper": [0]},
                                model_selection={"paper": "best_on_eval"}, augmentation={"paper": "flip_xy"})
    results = StudyRunner(study, profile, data_dir=prepared_study_release, progress=False).run()
    assert [r["status"] for r in results] == ["trained"]
    runs = mlflow.search_runs(experiment_names=["table2"], filter_string="attributes.status = 'FINISHED'")
    runs = runs[runs["tags.run_key"].notna()]
    assert set(runs["tags.model_selection"]) == {"best_on_eval"} and set(runs["tags.augmentation"]) == {"flip_xy"}
    assert set(runs["tags.precision"]) == {"fp32"} and set(runs["tags.dataset_kind"]) == {"real"}
    assert runs["tags.selected_iteration"].astype(int).between(1, 4).all()
    history = mlflow.MlflowClient().get_metric_history(runs["run_id"].iloc[0], "val/dice_mean")
    assert [m.step for m in history] == [1, 2, 3, 4]  # validated on the eval case after every step
    assert (runs["params.model_selection.split"] == "eval").all()
    cells = [{"method": c.method, "seed": str(c.seed), "run_key": c.run_key}
             for c in StudyPlan(study, profile, data_dir=prepared_study_release, progress=False).study_cells()]
    md = render_dice_tables("table2", "paper", tmp_path / "out", 2, "paper path", cells=cells)[0].read_text()
    assert "best_on_eval / flip_xy / fp32" in md and "amos (real)" in md
