"""Bad input is refused before any run exists: a message naming the file or key, exit code 2, and no
run (FINISHED, FAILED or any other) in the store."""
from __future__ import annotations

import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import mlflow
import nibabel as nib
import numpy as np
import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import STUDIES_DIR

Setup = Callable[[Path, Path, pytest.MonkeyPatch], tuple[list[str], list[str]]]


def study_file(tmp_path: Path, changes: dict | None = None, drop: tuple[str, ...] = (), text: str | None = None) -> str:
    path = tmp_path / "study.yaml"
    if text is not None:
        path.write_text(text)
        return str(path)
    raw = yaml.safe_load((STUDIES_DIR / "table2.yaml").read_text())
    raw["methods"] = ["supervised", "mean_teacher"]
    raw.update(changes or {})
    for key in drop:
        raw.pop(key)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def empty_split(cohort: Path, name: str) -> None:
    (cohort / "splits" / f"{name}.txt").write_text("")
    (cohort / "splits" / "SHA256SUMS").unlink(missing_ok=True)


def rewrite_label(cohort: Path, case_id: str, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    path = cohort / "labelsTr" / f"{case_id}.nii.gz"
    image = nib.load(str(path))
    data = change(np.asarray(image.dataobj).copy())
    nib.save(nib.Nifti1Image(data, image.affine), str(path))
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _silent_server() -> int:
    """A socket that accepts connections and never answers (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    threading.Thread(target=lambda: [server.accept() for _ in range(8)], daemon=True).start()
    return server.getsockname()[1]


RUN = ["run", "{study}", "--profile", "smoke", "--data", "{cohort}", "--no-progress"]


def _args(tmp_path: Path, cohort: Path, study: str | None = None, *extra: str) -> list[str]:
    return [a.format(study=study or study_file(tmp_path), cohort=cohort) for a in RUN] + list(extra)


def study(**changes: object) -> Setup:
    """A bad study file: table2 (supervised + Mean Teacher) with ``changes``."""
    def setup(tmp_path: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
        path = study_file(tmp_path, dict(changes))
        return _args(tmp_path, cohort, path), [path]
    return setup


def study_text(text: str) -> Setup:
    def setup(tmp_path: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
        path = study_file(tmp_path, text=text)
        return _args(tmp_path, cohort, path), [path]
    return setup


def flags(*extra: str) -> Setup:
    return lambda tmp_path, cohort, monkeypatch: (_args(tmp_path, cohort, None, *extra), [])


def data(change: Callable[[Path], object]) -> Setup:
    """The shipped study on a copy of the cohort that ``change`` damaged."""
    def setup(tmp_path: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
        cohort = Path(shutil.copytree(cohort, tmp_path / "cohort"))
        change(cohort)
        return _args(tmp_path, cohort), []
    return setup


def env(**values: str | Callable[[], str]) -> Setup:
    def setup(tmp_path: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
        for key, value in values.items():
            monkeypatch.setenv(key, value() if callable(value) else value)
        return _args(tmp_path, cohort), []
    return setup


def set_voxel(value: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(a: np.ndarray) -> np.ndarray:
        a[0, 0, 0] = value
        return a
    return change


BUDGET = {"cpu": 600, "paper": 33000}
SEEDS = {"cpu": [0], "paper": [0]}
BAD_INPUTS: dict[str, tuple[Setup, list[str]]] = {
    "budget 0": (study(budget={"smoke": 0, **BUDGET}), ["budget.smoke", ">= 1", "got 0"]),
    "budget -5": (study(budget={"smoke": -5, **BUDGET}), ["budget.smoke", "got -5"]),
    "budget as text": (study(budget={"smoke": "600", **BUDGET}), ["budget.smoke", "expected int", "'600'"]),
    "budget a fraction": (study(budget={"smoke": 1.5, **BUDGET}), ["budget.smoke", "expected int", "1.5"]),
    "seeds as one string": (study(seeds={"smoke": "0,1", **SEEDS}), ["seeds.smoke", "expected list[int]", "'0,1'"]),
    "seeds repeated": (study(seeds={"smoke": [0, 0], **SEEDS}), ["seeds.smoke", "more than once"]),
    "seeds negative": (study(seeds={"smoke": [-1], **SEEDS}), ["seeds.smoke", "[0, 2^32)"]),
    "seeds without the profile": (study(seeds=SEEDS), ["seeds", "no entry for profile 'smoke'"]),
    "--seeds abc": (flags("--seeds", "abc"), ["--seeds", "'abc'"]),
    "--seeds -1": (flags("--seeds=-1"), ["--seeds", "'-1'"]),
    "override of the wrong type": (study(method_overrides={"supervised": {"lr": "fast"}}),
                                   ["method_overrides.supervised.lr", "expected float", "'fast'"]),
    "override with a bool for an int": (study(method_overrides={"supervised": {"base_filters": True}}),
                                        ["method_overrides.supervised.base_filters", "expected int"]),
    "override outside a choice": (study(method_overrides={"supervised": {"norm": "layer"}}),
                                  ["method_overrides.supervised.norm", "'layer'", "'batch' | 'instance'"]),
    "override of a tuple of the wrong length": (study(methods=["ga"], method_overrides={"ga": {"cube_grid": [2, 2]}}),
                                                ["method_overrides.ga.cube_grid", "tuple[int, int, int]"]),
    "unknown override key": (study(method_overrides={"supervised": {"lrr": 0.1}}),
                             ["method_overrides.supervised", "unknown key", "lrr"]),
    "override for a method not in the study": (study(method_overrides={"dhc": {"lr": 0.1}}), ["method_overrides", "dhc"]),
    "unknown method": (study(methods=["supervised", "mean_techer"]), ["unknown method 'mean_techer'", "mean_teacher"]),
    "no method": (study(methods=[]), ["methods", "no method"]),
    "method listed twice": (study(methods=["supervised", "supervised"]), ["methods", "more than once"]),
    "labeled ratio above 1": (study(labeled_ratio=1.5), ["labeled_ratio", "1.5"]),
    "unknown metric protocol": (study(protocol="dhc2"), ["protocol", "dhc2"]),
    "typo in a study key": (study(budgett={}), ["budgett", "unknown key"]),
    "invalid YAML": (study_text("study: [x\n"), ["invalid YAML"]),
    "unknown profile": (lambda t, c, m: (["run", "table2", "--profile", "gpu"], []), ["unknown profile 'gpu'"]),
    "empty labeled split": (data(lambda c: empty_split(c, "labeled_5p")), ["labeled_5p.txt", "is empty"]),
    "empty unlabeled split": (data(lambda c: empty_split(c, "unlabeled_5p")), ["unlabeled_5p.txt", "is empty"]),
    "empty test split": (data(lambda c: empty_split(c, "test")), ["test.txt", "is empty"]),
    "no dataset.json in --data": (data(lambda c: (c / "dataset.json").unlink()), ["dataset.json not found"]),
    "label value outside the class map": (data(lambda c: rewrite_label(c, "syn_0300", set_voxel(99))),
                                          ["syn_0300.nii.gz", "[99]"]),
    "label of another shape": (data(lambda c: rewrite_label(c, "syn_0300", lambda a: a[:-2].copy())),
                               ["syn_0300.nii.gz", "shape"]),
    "tracking server refusing connections": (env(MLFLOW_TRACKING_URI=lambda: f"http://127.0.0.1:{_closed_port()}"),
                                             ["MLflow tracking server http://127.0.0.1:", "did not answer"]),
    "tracking server not answering": (env(ORGANBENCH_TRACKING_TIMEOUT_S="1",
                                          MLFLOW_TRACKING_URI=lambda: f"http://127.0.0.1:{_silent_server()}"),
                                      ["did not answer within 1 s"]),
    "store that cannot be written": (env(MLFLOW_TRACKING_URI="sqlite:////proc/organbench/mlflow.db"),
                                     ["sqlite:////proc/organbench/mlflow.db", "cannot write"]),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_any_run(name: str, tiny_cohort: Path, mlflow_store: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    setup, expected = BAD_INPUTS[name]
    argv, must_name = setup(tmp_path, tiny_cohort, monkeypatch)  # setups that damage data work on a copy
    start = time.time()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and sum(line.startswith("error: ") for line in err.splitlines()) == 1, err
    for fragment in expected + must_name:
        assert fragment in err, (fragment, err)
    assert time.time() - start < 60
    assert recorded_runs(mlflow_store) == 0  # no run of any status


def recorded_runs(uri: str) -> int:
    """Runs in the SQLite store (read with sqlite3: creating an MLflow store to ask costs seconds)."""
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():
        return 0
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0


def test_recorded_runs_sees_a_run(mlflow_store: str) -> None:
    """The check above can fail: it counts a run that exists."""
    mlflow.set_tracking_uri(mlflow_store)
    with mlflow.start_run():
        pass
    assert recorded_runs(mlflow_store) == 1


def test_at_least_twenty_distinct_bad_inputs() -> None:
    assert len(BAD_INPUTS) >= 20
