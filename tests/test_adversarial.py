"""Adversarial inputs walked through the CLI (issue 30): each case asserts all five properties at once:
exit code 2, one line naming the cause (never a traceback), no run of any status in the store,
nothing written outside the test's own folder, and no secret in the output or in any file written."""
from __future__ import annotations

import http.server
import shutil
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from benchmarks.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-Tok3n"
TABLE2 = (ROOT / "benchmarks" / "studies" / "table2.yaml").read_text()
WATCHED = [ROOT / "reports" / "out", ROOT / "methods", ROOT / "tests", ROOT / "benchmarks" / "studies", ROOT / "tak"]


@dataclass
class Case:
    argv: list[str]                       # {tmp}, {cohort}, {study}, {srv500}, {srvhtml} are filled in
    message: str                          # a fragment the one error line must hold
    env: dict[str, str] = field(default_factory=dict)
    study: str | None = None              # the text of {study} (written to tmp/study.yaml)
    damage: Callable[[Path], None] | None = None  # changes a private copy of the cohort


def _overrides(text: str) -> str:
    return TABLE2.replace("method_overrides: {}", "method_overrides: {supervised: {" + text + "}}")


def _label(cohort: Path, change: Callable[[np.ndarray], None]) -> None:
    path = cohort / "labelsTr" / "syn_0003.nii.gz"
    image = nib.load(str(path))
    data = np.asarray(image.dataobj).astype(np.int16)
    change(data)
    nib.save(nib.Nifti1Image(data, image.affine), str(path))


def _set(value: int) -> Callable[[np.ndarray], None]:
    def change(a: np.ndarray) -> None:
        a[0, 0, 0] = value
    return change


def _window(lo: float, hi: float) -> Callable[[Path], None]:
    def damage(cohort: Path) -> None:
        import json
        meta = json.loads((cohort / "dataset.json").read_text())
        meta["intensity_window"] = [lo, hi]
        (cohort / "dataset.json").write_text(json.dumps(meta))
    return damage


RUN = ["run", "{study}", "--profile", "smoke", "--data", "{cohort}", "--methods", "supervised", "--no-progress"]
RUN_T2 = ["run", "table2", "--profile", "smoke", "--data", "{cohort}", "--methods", "supervised", "--no-progress"]
CASES: dict[str, Case] = {
    "lr 0": Case(RUN, "method_overrides.supervised.lr", study=_overrides("lr: 0")),
    "lr negative": Case(RUN, "method_overrides.supervised.lr", study=_overrides("lr: -0.01")),
    "lr NaN": Case(RUN, "method_overrides.supervised.lr", study=_overrides("lr: .nan")),
    "lr infinite": Case(RUN, "method_overrides.supervised.lr", study=_overrides("lr: .inf")),
    "lr 1e308": Case(RUN, "method_overrides.supervised.lr", study=_overrides("lr: 1.0e+308")),
    "lr a huge string": Case(RUN, "characters)", study=_overrides("lr: '" + "9" * 5000 + "'")),
    "width 0": Case(RUN, "method_overrides.supervised.base_filters", study=_overrides("base_filters: 0")),
    "width -4": Case(RUN, "method_overrides.supervised.base_filters", study=_overrides("base_filters: -4")),
    "momentum 1.5": Case(RUN, "method_overrides.supervised.momentum", study=_overrides("momentum: 1.5")),
    "seed 2^32 in the study": Case(RUN, "[0, 2^32)", study=TABLE2.replace("smoke: [0]", "smoke: [4294967296]")),
    "--seeds 2^32": Case(RUN_T2 + ["--seeds", "4294967296"], "[0, 2^32)"),
    "--seeds -1": Case(RUN_T2 + ["--seeds=-1"], "--seeds"),
    "duplicate key": Case(RUN, "appears twice", study=TABLE2 + "labeled_ratio: 0.1\n"),
    "anchor bomb": Case(RUN, "aliases", study="a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(12))),
    "study over 1 MiB": Case(RUN, "over 1024 KiB", study=TABLE2 + "# " + "x" * (1 << 20) + "\n"),
    "study YAML not a mapping": Case(RUN, "{tmp}/study.yaml", study="- a\n- b\n"),
    "study name leaving the output folder": Case(RUN, "study '../../x'",
                                                 study=TABLE2.replace("study: table2", "study: ../../x")),
    "study name with a slash": Case(RUN, "study 'a/b'", study=TABLE2.replace("study: table2", "study: a/b")),
    "study file missing": Case(["run", "{tmp}/nope.yaml", "--profile", "smoke"], "nope"),
    "unknown study": Case(["report", "table99"], "unknown study 'table99'"),
    "unknown profile": Case(["run", "table2", "--profile", "gpu"], "unknown profile 'gpu'"),
    "paper profile without CUDA": Case(["run", "table2", "--profile", "paper", "--data", "{tmp}"], "no CUDA device"),
    "unknown URI scheme with a password": Case(RUN_T2, "unknown scheme 'ftp'",
                                               env={"MLFLOW_TRACKING_URI": f"ftp://bob:{SECRET}@example.invalid/s"}),
    "server not answering, token in the query": Case(RUN_T2, "did not answer", env={
        "MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@127.0.0.1:9/?token={SECRET}",
        "ORGANBENCH_TRACKING_TIMEOUT_S": "1"}),
    "server answering 500": Case(RUN_T2, "HTTP 500", env={"MLFLOW_TRACKING_URI": "{srv500}"}),
    "server answering HTML": Case(RUN_T2, "not MLflow's 'OK'", env={"MLFLOW_TRACKING_URI": "{srvhtml}"}),
    "tracking timeout not a number": Case(RUN_T2, "ORGANBENCH_TRACKING_TIMEOUT_S='soon'", env={
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "ORGANBENCH_TRACKING_TIMEOUT_S": "soon"}),
    "heartbeat not a number": Case(RUN_T2, "ORGANBENCH_HEARTBEAT_S='often'", env={"ORGANBENCH_HEARTBEAT_S": "often"}),
    "stale timeout negative": Case(RUN_T2, "ORGANBENCH_STALE_AFTER_S", env={"ORGANBENCH_STALE_AFTER_S": "-5"}),
    "settle time NaN": Case(RUN_T2, "ORGANBENCH_CLAIM_SETTLE_S", env={"ORGANBENCH_CLAIM_SETTLE_S": "nan"}),
    "store that cannot be written": Case(RUN_T2, "cannot write",
                                         env={"MLFLOW_TRACKING_URI": "sqlite:////proc/organbench/mlflow.db"}),
    "checkpoint folder that is a file": Case(RUN_T2 + ["--checkpoint-dir", "{tmp}/study.yaml"], "not writable",
                                             study="a file"),
    "report folder that is a file": Case(["report", "table2", "--profile", "smoke", "--out", "{tmp}/study.yaml"],
                                         "is a file", study="a file"),
    "label 256": Case(RUN_T2, "[256]", damage=lambda c: _label(c, _set(256))),
    "label -1": Case(RUN_T2, "[-1]", damage=lambda c: _label(c, _set(-1))),
    "label one past the last class": Case(RUN_T2, "[16]", damage=lambda c: _label(c, _set(16))),
    "intensity window of zero width": Case(RUN_T2, "intensity_window", damage=_window(100.0, 100.0)),
    "intensity window reversed": Case(RUN_T2, "intensity_window", damage=_window(275.0, -125.0)),
    "--data that does not exist": Case(["run", "table2", "--profile", "smoke", "--data", "{tmp}/none"], "{tmp}/none"),
    "new-method named like a package": Case(["new-method", "common"], "common"),
    "new-method named like a method": Case(["new-method", "dhc"], "dhc"),
    "new-method name not an identifier": Case(["new-method", "1abc"], "1abc"),
    "new-method name a keyword": Case(["new-method", "class"], "class"),
    "evaluate under an unknown protocol": Case(["evaluate", "table2", "--profile", "smoke", "--data", "{cohort}",
                                                "--protocol", "dhc9"], "dhc9"),
    "predict with an unknown run": Case(["predict", "0123abcd", "--in", "{tmp}/a.nii.gz", "--out", "{tmp}/b.nii.gz"],
                                        "0123abcd"),
    "predict onto its input": Case(["predict", "0123abcd", "--in", "{tmp}/a.nii.gz", "--out", "{tmp}/a.nii.gz"],
                                   "overwrite its --in"),
}


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b"<html>a proxy page</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def impostors():
    servers = {}
    for name, status in (("srv500", 500), ("srvhtml", 200)):
        server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
        server.status = status  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = f"http://carol:{SECRET}@127.0.0.1:{server.server_port}"
    yield servers


def _snapshot(folders: list[Path]) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_mtime_ns) for folder in folders if folder.exists() for p in folder.rglob("*")}


def _runs(store: Path) -> int:
    if not store.is_file():
        return 0
    with sqlite3.connect(store) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0


def test_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_adversarial_input_is_refused_cleanly(name: str, tiny_cohort: Path, tmp_path: Path, impostors: dict,
                                              empty_store_file: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    cohort = tiny_cohort
    if case.damage is not None:
        cohort = Path(shutil.copytree(tiny_cohort, work / "cohort"))
        case.damage(cohort)
    if case.study is not None:
        (work / "study.yaml").write_text(case.study)
    store = work / "mlflow.db"
    shutil.copyfile(empty_store_file, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("ORGANBENCH_CHECKPOINT_DIR", str(work / "checkpoints"))
    fill = {"{tmp}": str(work), "{cohort}": str(cohort), "{study}": str(work / "study.yaml"),
            "{srv500}": impostors["srv500"], "{srvhtml}": impostors["srvhtml"]}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text
    for key, value in case.env.items():
        monkeypatch.setenv(key, filled(value))
    outside = _snapshot(WATCHED + [tmp_path.parent / "x", tmp_path.parent / "a"])
    code = main([filled(a) for a in case.argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-1000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-2000:]
    assert filled(case.message) in lines[0], (case.message, lines[0])
    assert _runs(store) == 0  # no run of any status: nothing FINISHED, FAILED or left RUNNING
    assert _snapshot(WATCHED + [tmp_path.parent / "x", tmp_path.parent / "a"]) == outside
    assert SECRET not in out + err
    for path in work.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
