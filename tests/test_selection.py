"""Model selection, augmentation and precision: the paper protocol's choices, named and recorded."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from benchmarks.cli import main
from benchmarks.data import Case
from benchmarks.selection import RULES, SelectionRule, Selector, centre_crop, selection_rule, validation_dice
from benchmarks.training import TwoStreamSampler, train
from methods import get_method
from tests.study_files import smoke_budget, write_study


def tiny_method(name: str = "supervised"):
    cls = get_method(name)
    return cls(cls.Config(base_filters=2, dropout=False), 3, max_iterations=20)


def marked(method, value: float) -> None:
    """Set every parameter of ``method`` to ``value`` (so the state at each step is recognisable)."""
    with torch.no_grad():
        for module in method.modules().values():
            for p in module.parameters():
                p.fill_(value)


def test_best_on_eval_restores_the_network_with_the_highest_validation_dice() -> None:
    method = tiny_method()
    rule = SelectionRule("test", True, interval=0.2)  # validations after 2, 4, 6, 8, 10 of 10 steps
    scores = iter([10.0, 30.0, 20.0, 25.0, 5.0])
    logged: list[tuple[int, float]] = []
    selector = Selector(rule, method, 10, lambda: next(scores), lambda s, v: logged.append((s, v)))
    for done in range(1, 11):
        marked(method, float(done))  # "training": the network after `done` steps
        assert selector(done) is False
    assert logged == [(2, 10.0), (4, 30.0), (6, 20.0), (8, 25.0), (10, 5.0)]
    assert selector.finish() == 4
    assert all(torch.all(p == 4.0) for p in method.net.parameters())  # the network of step 4, not of step 10


def test_last_keeps_the_last_network_and_validates_nothing() -> None:
    method = tiny_method()
    selector = Selector(RULES["last"], method, 10, lambda: pytest.fail("validated under 'last'"))
    for done in range(1, 11):
        marked(method, float(done))
        assert selector(done) is False
    assert selector.finish() == 10 and all(torch.all(p == 10.0) for p in method.net.parameters())


def test_early_stopping_stops_training_after_patience_without_improvement() -> None:
    method = tiny_method()
    cases = [Case(f"c{i}", np.full((16, 16, 16), i / 4, np.float32), np.full((16, 16, 16), i % 3, np.uint8),
                  (1.0, 1.0, 1.0)) for i in range(3)]
    sampler = TwoStreamSampler(cases, [], 2, 0, (16, 16, 16), seed=0, policy="labeled_only")
    rule = SelectionRule("test", True, interval=0.1, patience=0.3)  # every 2 of 20 steps; patience 6 steps
    scores = iter([50.0, 60.0, 55.0, 58.0, 59.0, 70.0, 71.0, 72.0, 73.0, 74.0])
    selector = Selector(rule, method, 20, lambda: next(scores))
    steps: list[int] = []
    original = method.train_step
    method.train_step = lambda batch, step: (steps.append(step), original(batch, step))[1]  # type: ignore[method-assign]
    train(method, sampler, 20, progress=False, after_step=selector)
    # best 60 at step 4; no improvement at 6, 8, 10 -> stop after step 10 (6 steps of patience)
    assert steps == list(range(10)) and selector.stopped_early
    assert selector.best_step == 4 and selector.finish() == 4


def test_reference_rules_resolve_to_the_references_cadence() -> None:
    tak = RULES["tak"].steps(161)  # 161 iterations stand for the reference's 161 epochs
    assert tak[:3] == [20, 25, 30] and tak[-2:] == [160, 161]
    assert RULES["tak"].validation_stride((96, 96, 96), (32, 32, 16)) == (90, 90, 80)
    assert RULES["ga"].steps(17000)[:3] == [1000, 2000, 3000]
    assert selection_rule("ga", "synapse").steps(17000)[:2] == [500, 1000]
    assert RULES["dhc"].window == "centre_crop" and RULES["dhc"].patience * 200 == 50
    assert RULES["magicnet"].steps(1000) == [] and RULES["last"].steps(1000) == []
    with pytest.raises(KeyError, match="unknown model selection"):
        selection_rule("best")


def test_validation_rules_for_absent_classes_and_centre_crop() -> None:
    class Constant:
        """A 'method' that predicts class 1 everywhere."""
        device = torch.device("cpu")

        def predict(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
            logits[:, 1] = 1
            return logits

    label = np.zeros((20, 20, 20), np.uint8)
    label[5:15, 5:15, 5:15] = 1  # class 2 absent everywhere
    case = Case("c", np.zeros((20, 20, 20), np.float32), label, (1.0, 1.0, 1.0))
    sliding_zero = validation_dice(Constant(), [case], 3, RULES["tak"], (16, 16, 16), (8, 8, 8))
    expected = 100 * 2 * 1000 / (8000 + 1000)
    assert sliding_zero == pytest.approx(expected / 2)  # class 2 absent from both: counts 0 (TAK/GA validation)
    crop = validation_dice(Constant(), [case], 3, RULES["dhc"], (16, 16, 16), (8, 8, 8))
    assert crop == pytest.approx(100 * 2 * 1000 / (16 ** 3 + 1000))  # centre crop only; absent class left out
    assert centre_crop(np.arange(10)[:, None, None] * np.ones((10, 4, 4)), (6, 6, 6))[:, 1, 1].tolist() == [
        2, 3, 4, 5, 6, 7]


def selection_study(tmp_path: Path, **changes: object) -> str:
    """Table 2's study (its name kept) with the labeled-only bound at 8 smoke iterations."""
    return write_study(tmp_path, "selection", **{"study": "table2", "methods": ["supervised"],
                                                 "budget": smoke_budget(8), **changes})


def test_a_run_selects_on_eval_cases_only_and_records_it(tiny_cohort: Path, tmp_path: Path, mlflow_store: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import selection
    seen: list[str] = []
    original = selection.validation_dice

    def spy(method, cases, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(c.case_id for c in cases)
        return original(method, cases, *args, **kwargs)

    monkeypatch.setattr(selection, "validation_dice", spy)
    study = selection_study(tmp_path, model_selection={"smoke": "best_on_eval"}, augmentation={"smoke": "flip_xy"})
    assert main(["run", study, "--profile", "smoke", "--data", str(tiny_cohort), "--no-progress"]) == 0
    splits = {n: (tiny_cohort / "splits" / f"{n}.txt").read_text().split() for n in ("eval", "test")}
    assert seen and set(seen) <= set(splits["eval"]) and not set(seen) & set(splits["test"])
    run = mlflow.search_runs(experiment_names=["table2"], filter_string="attributes.status = 'FINISHED'")
    run = run[run["tags.run_key"].notna()].iloc[0]
    assert run["tags.model_selection"] == "best_on_eval" and run["tags.augmentation"] == "flip_xy"
    assert run["tags.precision"] == "fp32" and run["params.model_selection.interval"] == "0.05"
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "val/dice_mean")
    assert [m.step for m in history] == [2, 3, 4, 5, 6, 7, 8]  # every 5 % of 8 iterations from 25 % on
    best = max(history, key=lambda m: (m.value, -m.step))
    assert run["tags.selected_iteration"] == str(best.step)


def test_reference_gives_each_method_its_reference_rule(tiny_cohort: Path, tmp_path: Path) -> None:
    from benchmarks.config import load_profile, load_study
    from benchmarks.plan import StudyPlan
    study = load_study(selection_study(tmp_path, methods=["dhc", "ga", "tak", "magicnet"],
                                   model_selection={"smoke": "reference"}, augmentation={"smoke": "reference"}))
    plan = StudyPlan(study, load_profile("smoke"), data_dir=tiny_cohort, progress=False)
    rules = {c.method: (c.selection.name, c.augmentation) for c in plan.cells()}
    assert rules == {"dhc": ("dhc", "flip_xy"), "ga": ("ga", "none"), "tak": ("tak", "none"),
                     "magicnet": ("magicnet", "none")}
    assert "eval" in plan.splits  # read because dhc, ga and tak validate


@pytest.mark.parametrize("name", ["supervised", "dhc", "tak"])
def test_bf16_autocast_trains_on_the_cpu(name: str) -> None:
    """The bf16 path: convolutions run in bfloat16 under autocast, losses stay finite."""
    cls = get_method(name)
    cube = name == "tak"
    patch = (32, 32, 32) if cube else (16, 16, 16)
    overrides = {"cube_grid": (2, 1, 1), "location_hidden": 32} if cube else {}
    method = cls(cls.Config(base_filters=4, dropout=False, **overrides), 4, max_iterations=4, patch=patch,
                 class_names=["background", "spleen", "right_kidney", "left_kidney"])
    dtypes: set[torch.dtype] = set()
    first_conv = next(m for m in method.modules().values() for m in m.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    cases = [Case(f"c{i}", np.random.default_rng(i).random((36, 36, 36), dtype=np.float32),
                  np.random.default_rng(i).integers(0, 4, (36, 36, 36)).astype(np.uint8), (1.0, 1.0, 1.0))
             for i in range(3)]
    sampler = TwoStreamSampler(cases, cases, 2, 2, patch, seed=0, policy=cls.batch_policy)
    logs = train(method, sampler, 2, progress=False, precision="bf16")
    assert np.isfinite(logs["loss"]) and torch.bfloat16 in dtypes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast + GradScaler needs CUDA")
def test_fp16_with_grad_scaler_on_cuda() -> None:
    from benchmarks.training import prepare_precision
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=4, dropout=False), 3, max_iterations=4, device="cuda")
    prepare_precision(method, "fp16")
    cases = [Case(f"c{i}", np.random.default_rng(i).random((20, 20, 20), dtype=np.float32),
                  np.random.default_rng(i).integers(0, 3, (20, 20, 20)).astype(np.uint8), (1.0, 1.0, 1.0))
             for i in range(2)]
    sampler = TwoStreamSampler(cases, [], 2, 0, (16, 16, 16), seed=0, policy="labeled_only", device="cuda")
    assert np.isfinite(train(method, sampler, 3, progress=False, precision="fp16")["loss"])
    assert method.grad_scaler is not None and "grad_scaler" in method.state_dict()


def test_fp16_on_the_cpu_is_a_clear_error() -> None:
    from benchmarks.training import autocast
    from benchmarks.errors import OrganbenchError
    with pytest.raises(OrganbenchError, match="fp16 needs CUDA"):
        autocast("cpu", "fp16")


def test_gpu_check_reports_a_failing_method_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from benchmarks import gpu_check as check
    real = check.check_method

    def broken_cps(name, *args, **kwargs):
        if name == "cps":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(check, "check_method", broken_cps)
    out = tmp_path / "gpu_check.json"
    code = main(["gpu-check", "--device", "cpu", "--tiny", "--iterations", "1", "--methods", "cps,supervised",
                 "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 1 and not report["all_finite"]
    cps, supervised = report["methods"]
    assert cps["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert supervised["loss_finite"] and supervised["step_s_median"] > 0
    assert report["environment"]["cudnn_benchmark"] is False


def test_gpu_check_rejects_an_unknown_method_before_running() -> None:
    assert main(["gpu-check", "--device", "cpu", "--tiny", "--methods", "supervised,no_such_method"]) == 2


def test_the_cli_imports_without_mlflow() -> None:
    """gpu-check runs on a bare GPU image (torch only): the CLI must not import MLflow up front."""
    import subprocess
    import sys
    code = "import sys, benchmarks.cli; print(sorted(m for m in ('mlflow', 'monai', 'open_clip') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_tiny(tmp_path: Path) -> None:
    import json
    from methods import list_methods
    out = tmp_path / "gpu_check.json"
    assert main(["gpu-check", "--device", "cpu", "--tiny", "--iterations", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["methods"]] == list_methods()
    assert report["all_finite"] and all(r["step_s_median"] > 0 and r["patch"] == [32, 32, 32]
                                        for r in report["methods"])
