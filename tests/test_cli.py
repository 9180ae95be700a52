"""End to end through the CLI: smoke study -> MLflow -> report; idempotent re-runs; bad input exits non-zero."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import PROJECT_ROOT, STUDIES_DIR

ORGANS = ["spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior_vena_cava", "pancreas", "right_adrenal_gland", "left_adrenal_gland", "duodenum", "bladder",
          "prostate_uterus"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def finished(uri: str, study: str = "table2") -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(study) is None:
        return pd.DataFrame()
    runs = mlflow.search_runs(experiment_names=[study], filter_string="attributes.status = 'FINISHED'")
    return runs[runs["tags.run_key"].notna()] if "tags.run_key" in runs else runs.iloc[0:0]


def test_smoke_study_end_to_end(tiny_cohort: Path, mlflow_store: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    args = ["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--no-progress",
            "--methods", "supervised,fully,mean_teacher"]
    assert main(args) == 0
    runs = finished(mlflow_store)
    assert sorted(runs["tags.method"]) == ["fully", "mean_teacher", "supervised"]
    assert set(runs["tags.seed"]) == {"0"}
    for organ in ORGANS:
        assert runs[f"metrics.test/dice/{organ}"].notna().all()
        assert runs[f"metrics.test/asd/{organ}"].notna().all()
    for key in ("test/dice_mean", "test/dice_large", "test/dice_small", "test/asd_mean", "cost/params_M"):
        assert runs[f"metrics.{key}"].notna().all(), key
    for tag in ("run_key", "profile", "dataset", "protocol", "git_commit", "git_dirty", "asd_units", "empty_rule"):
        assert runs[f"tags.{tag}"].notna().all(), tag
    assert (runs["tags.protocol"] == "dhc").all() and (runs["tags.dataset_kind"] == "synthetic").all()
    assert runs["tags.mlflow.parentRunId"].nunique() == 1  # children of one launch
    client = mlflow.MlflowClient()
    curve = client.get_metric_history(runs["run_id"].iloc[0], "train/loss")
    assert len(curve) >= 2  # a training curve, not just a final value
    run_id = runs["run_id"].iloc[0]
    artifacts = {a.path for folder in ("eval", "plots", "env", "config") for a in client.list_artifacts(run_id, folder)}
    assert {"eval/per_case.csv", "plots/training_curve.png", "env/pip_freeze.txt", "config/resolved.json"} <= artifacts

    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 run(s) trained, 3 already finished" in out
    assert len(finished(mlflow_store)) == 3

    assert main(["report", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "table2.md").read_text()
    for title in ("V-Net (fully)", "V-Net (labeled only)", "Mean Teacher"):
        assert title in md
    assert "SYNTHETIC" in md and "Published" in md
    table = pd.read_csv(tmp_path / "out" / "table2.csv", header=[0, 1], index_col=0)
    assert table[("dice_percent", "liver")].notna().all() and len(table) == 3
    assert (tmp_path / "out" / "table2.png").stat().st_size > 10_000


def in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Exit code and stderr of the CLI run in this process (what ``python -m benchmarks`` returns)."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def test_unknown_method_exits_with_known_list(mlflow_store: str, capsys: pytest.CaptureFixture) -> None:
    code, err = in_process(capsys, "run", "table2", "--profile", "smoke", "--methods", "mean_techer")
    assert code == 2
    assert "unknown method 'mean_techer'" in err and "mean_teacher" in err


def test_typo_in_study_file_exits(tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture) -> None:
    raw = yaml.safe_load((STUDIES_DIR / "table2.yaml").read_text())
    raw["labelled_ratio"] = raw.pop("labeled_ratio")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = in_process(capsys, "run", str(path), "--profile", "smoke")
    assert code == 2
    assert "labelled_ratio" in err and str(path) in err


def test_corrupt_nifti_fails_before_any_run(cohort_copy: Path, mlflow_store: str,
                                            capsys: pytest.CaptureFixture) -> None:
    bad = cohort_copy / "labelsTr" / "syn_0300.nii.gz"  # a test case: read before training starts
    bad.write_bytes(bad.read_bytes()[:100])
    code, err = in_process(capsys, "run", "table2", "--profile", "smoke", "--data", str(cohort_copy), "--no-progress")
    assert code == 2
    assert str(bad) in err
    assert finished(mlflow_store).empty


def test_split_naming_missing_case_fails(cohort_copy: Path, mlflow_store: str, capsys: pytest.CaptureFixture) -> None:
    split = cohort_copy / "splits" / "labeled_5p.txt"
    split.write_text(split.read_text() + "syn_0999\n")
    (cohort_copy / "splits" / "SHA256SUMS").unlink()
    code, err = in_process(capsys, "run", "table2", "--profile", "smoke", "--data", str(cohort_copy))
    assert code == 2
    assert "syn_0999" in err and "labeled_5p.txt" in err
    assert finished(mlflow_store).empty


def test_report_without_runs_is_a_clear_error(mlflow_store: str, capsys: pytest.CaptureFixture,
                                              tmp_path: Path) -> None:
    """A report with nothing to show fails in one line and leaves no (empty) output folder behind."""
    out = tmp_path / "reports" / "table2"
    code, err = in_process(capsys, "report", "table2", "--profile", "smoke", "--out", str(out))
    assert code == 2 and "run the study first" in err
    assert not (tmp_path / "reports").exists()


def test_report_folder_under_a_file_is_refused_before_rendering(mlflow_store: str, capsys: pytest.CaptureFixture,
                                                                tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    code, err = in_process(capsys, "report", "table2", "--profile", "smoke", "--out", str(tmp_path / "afile" / "sub"))
    assert code == 2 and "afile is a file" in err


def test_list_methods() -> None:
    result = cli("list-methods")
    assert result.returncode == 0
    from methods import list_methods
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    assert listed == list_methods() and {"supervised", "fully", "mean_teacher", "uamt", "cps", "cld", "dhc"} <= set(listed)


def test_crashed_run_is_failed_never_finished(tiny_cohort: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A bug in a method: one line naming it and exit 2 (no traceback); the run is FAILED with the error
    tagged; ``ORGANBENCH_DEBUG=1`` raises it for the developer."""
    from methods.supervised import Supervised

    def crash(self, batch, step):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in the method")

    monkeypatch.setattr(Supervised, "train_step", crash)
    args = ["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "RuntimeError: a bug in the method" in err and "ORGANBENCH_DEBUG" in err and "Traceback" not in err
    monkeypatch.setenv("ORGANBENCH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug in the method"):
        main(args)
    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(experiment_names=["table2"])
    assert set(runs["status"]) == {"FAILED"}  # the cells and their launches
    assert set(runs["tags.error"].dropna()) == {"RuntimeError: a bug in the method"}
    assert finished(mlflow_store).empty


def test_data_stats_of_one_label_file_and_of_a_corrupt_one(tmp_path: Path, mlflow_store: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``data stats --label-file``: the file is read into LPS axes once; a corrupt file is named, exit 2."""
    import nibabel as nib
    import numpy as np
    label = np.zeros((12, 10, 8), np.uint8)
    label[1:5, 2:6, 1:4] = 6   # liver, 48 voxels
    label[7:9, 2:4, 1:3] = 1   # spleen, 8 voxels
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    assert main(["data", "stats", "--label-file", str(path), "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(next((tmp_path / "out").glob("*.csv"))).set_index("organ")
    assert table.loc["liver", "voxel_share"] == pytest.approx(48 / 56)
    assert table.loc["spleen", "voxel_share"] == pytest.approx(8 / 56)
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not a NIfTI")
    assert main(["data", "stats", "--label-file", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_an_unknown_study_or_profile_is_refused_before_torch_and_mlflow_load() -> None:
    """A typo costs a fraction of a second, not the seconds of importing torch and MLflow."""
    code = ("import sys\nfrom benchmarks.cli import main\n"
            "codes = [main(a.split()) for a in ('run table99', 'report table99', 'run table2 --profile gpu',"
            " 'report table2 --profile gpu')]\n"
            "print(codes, sorted(m for m in ('torch', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.stdout.strip() == "[2, 2, 2, 2] []", (done.stdout, done.stderr[-1000:])
    assert done.stderr.count("unknown study 'table99'") == 2 and done.stderr.count("unknown profile 'gpu'") == 2
