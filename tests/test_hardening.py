"""Adversarial inputs (issue 30): a pid file that names something else, label values outside the class
map. Each case: the message, the exit code, nothing signalled or recorded that should not be."""
from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import http.server
import subprocess
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.data import load_dataset, read_case
from benchmarks.data.prepare import prepare_case
from benchmarks.errors import ConfigError, DatasetError
from mlflow_server.server import ServerConfig, stop


@pytest.fixture
def decoy():
    """A foreign process leading its own process group (as a server started here would)."""
    process = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("record", [
    "foreign", "foreign_with_its_start_time", "stale", 0, 1, -1, "own_group", "not a number", "{not json",
    "true"])
def test_stop_signals_nothing_it_did_not_start(tmp_path: Path, decoy: subprocess.Popen, record: object,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlflow_server stop`` with a stale, foreign, 0, 1, negative or non-numeric pid file: the pid file
    goes, no process group is signalled (the decoy lives; os.killpg is never called)."""
    config = ServerConfig(port=5999, root=tmp_path)
    started = Path(f"/proc/{decoy.pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    contents = {"foreign": {"pid": decoy.pid},
                "foreign_with_its_start_time": {"pid": decoy.pid, "started": started},  # not an mlflow server
                "stale": {"pid": _dead_pid(), "started": "1"},
                "own_group": {"pid": os.getpgrp(), "started": None}}.get(record, {"pid": record})
    text = record if record in ("{not json",) else json.dumps(contents)
    config.pid_file.write_text(text if isinstance(text, str) else json.dumps(text))
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: signalled.append((pid, sig)))
    assert stop(config) is False
    assert signalled == [] and _alive(decoy.pid) and not config.pid_file.exists()


def _label_file(path: Path, values: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(values.astype(np.int16), np.diag([-1.0, -1.0, 1.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize("value", [256, 16, -1])
def test_run_refuses_a_label_outside_the_class_map(cohort_copy: Path, value: int) -> None:
    """``run`` reads cases with :func:`read_case`: a label of 256 (which uint8 would make background),
    one past the last class, or a negative one, is refused with the file and the value."""
    info = load_dataset(cohort_copy)
    path = info.label_path("syn_0003")
    label = np.asarray(nib.load(str(path)).dataobj).astype(np.int16)
    label[0, 0, 0] = value
    nib.save(nib.Nifti1Image(label, nib.load(str(path)).affine), str(path))
    with pytest.raises(DatasetError, match=rf"{path.name}: label values \[{value}\] outside the class map 0\.\.15"):
        read_case(info, "syn_0003")


@pytest.mark.parametrize("value", [256, -1])
def test_prepare_refuses_a_label_outside_the_class_map(tmp_path: Path, value: int) -> None:
    """``data prepare``: the same before the label is resampled and cast to uint8."""
    image = np.zeros((8, 8, 8))
    label = np.zeros((8, 8, 8))
    label[2:4, 2:4, 2:4], label[5, 5, 5] = 6, value
    image_path = _label_file(tmp_path / "img.nii.gz", image)
    label_path = _label_file(tmp_path / "lab.nii.gz", label)
    with pytest.raises(DatasetError, match=rf"lab\.nii\.gz: label values \[{value}\] outside the class map 0\.\.15"):
        prepare_case(image_path, label_path, "ga", "amos", num_classes=16)
    with pytest.raises(DatasetError, match=r"lab\.nii\.gz: negative label values \[-1\]") if value < 0 else \
            contextlib.nullcontext():
        prepare_case(image_path, label_path, "ga", "amos", label_map={6: 6}, num_classes=16)


@pytest.mark.parametrize("title", ['My "fast" method', "back\\slash \"\"\" end", "'; import os; os.system('x') #"])
def test_new_method_writes_the_title_as_text(tmp_path: Path, title: str) -> None:
    """Quotes, backslashes or code in ``--title`` end up as the title string, and the module parses."""
    from benchmarks.new_method import create_method
    (tmp_path / "methods").mkdir()
    (tmp_path / "tests").mkdir()
    module, test = create_method("my_fast", title, root=tmp_path)
    tree = ast.parse(module.read_text())
    ast.parse(test.read_text())
    titles = [keyword.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "id", "") == "register" for keyword in node.keywords if keyword.arg == "title"]
    assert titles == [title]


@pytest.mark.parametrize(("name", "title", "message"), [
    ("common", None, "already exists"), ("registry", None, "already exists"), ("ga", None, "already exists"),
    ("My-Method", None, "not a valid method name"), ("class", None, "not a valid method name"),
    ("ok_name", "two\nlines", "printable"), ("ok_name", "x" * 81, "at most 80")])
def test_new_method_refuses_names_and_titles(tmp_path: Path, name: str, title: str | None, message: str) -> None:
    """A name of an existing module or package (``methods/common/``), a method, a non-identifier or a
    keyword, or a multi-line or overlong title: refused, nothing written."""
    from benchmarks.new_method import create_method
    (tmp_path / "methods" / "common").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    with pytest.raises(ConfigError, match=message):
        create_method(name, title, root=tmp_path)
    assert sorted(p.name for p in (tmp_path / "methods").iterdir()) == ["common"]
    assert list((tmp_path / "tests").iterdir()) == []


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20))


@pytest.mark.parametrize(("text", "message"), [
    ("study: a\nstudy: b\n", "line 2: key 'study' appears twice"),
    (BOMB, "aliases"),
    ("study: [unclosed\n", "invalid YAML"),
    ("x: " + "y" * (1 << 20) + "\n", "KiB"),
])
def test_study_yaml_refuses_duplicates_bombs_and_garbage(tmp_path: Path, text: str, message: str) -> None:
    """A study file with a duplicated key (plain YAML keeps the last silently), an anchor bomb, broken
    syntax or megabytes: one short error naming the file, no run."""
    from benchmarks.cli import main
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    from benchmarks.config import load_study
    with pytest.raises(ConfigError, match=message) as caught:
        load_study(str(path))
    assert str(path) in str(caught.value) and len(str(caught.value)) < 600
    assert main(["run", str(path), "--profile", "smoke"]) == 2


def test_knowledge_yaml_refuses_duplicate_keys(tmp_path: Path) -> None:
    from tak.knowledge import load_knowledge
    path = tmp_path / "kb.yaml"
    path.write_text("dataset: amos\ndataset: synapse\n")
    with pytest.raises(ConfigError, match="kb.yaml: line 2: key 'dataset' appears twice"):
        load_knowledge(path)


class _Answer(http.server.BaseHTTPRequestHandler):
    """A local HTTP server that is not MLflow: /health answers ``self.server.status`` with ``self.server.body``."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(self.server.body)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def impostor():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


SECRET = "pa55word-XYZ"


@pytest.mark.parametrize(("uri", "env", "message"), [
    (f"http://alice:{SECRET}@127.0.0.1:9/?token={SECRET}", {}, "did not answer"),
    (f"ftp://bob:{SECRET}@example.invalid/store", {}, "unknown scheme 'ftp'"),
    ("http://127.0.0.1:9", {"ORGANBENCH_TRACKING_TIMEOUT_S": "soon"}, "ORGANBENCH_TRACKING_TIMEOUT_S='soon'"),
    ("http://127.0.0.1:9", {"ORGANBENCH_TRACKING_TIMEOUT_S": "-1"}, "expected seconds"),
    ("status:500", {}, "HTTP 500"),
    ("status:200", {}, "not MLflow's 'OK'"),
])
def test_tracking_uri_faults_are_one_line_without_secrets(uri: str, env: dict[str, str], message: str, impostor,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A tracking URI that does not answer, has an unknown scheme, a bad timeout variable, or a server that
    answers 500 or an HTML page: exit 2, one line, no password or token in it, no run anywhere."""
    from benchmarks.cli import main
    if uri.startswith("status:"):
        impostor.status, impostor.body = int(uri.partition(":")[2]), b"<html>proxy</html>"
        uri = f"http://carol:{SECRET}@127.0.0.1:{impostor.server_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["run", "table2", "--profile", "smoke", "--methods", "supervised", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and SECRET not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("override", "message"), [
    ("lr: 0", "lr: 0.0 is out of range (0.0, 10.0]"), ("lr: -0.01", "out of range"), ("lr: .nan", "expected float"),
    ("lr: .inf", "expected float"), ("lr: 1.0e+308", "out of range"), ("base_filters: 0", "out of range [1, 1024]"),
    ("base_filters: -4", "out of range"), ("momentum: 1.5", "out of range"),
    ("lr: '" + "9" * 500 + "'", "characters)"),
])
def test_values_checked_for_range_before_any_run(tmp_path: Path, mlflow_store: str, override: str, message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Type and range: a zero, negative, NaN, infinite or absurd rate, a zero or negative width: one short
    line naming the file and key, exit 2, and no run in the store (nothing trained on nonsense)."""
    from benchmarks.cli import main
    from mlflow.tracking import MlflowClient
    study = (Path(__file__).resolve().parents[1] / "benchmarks" / "studies" / "table2.yaml").read_text()
    path = tmp_path / "bad.yaml"
    path.write_text(study.replace("method_overrides: {}", "method_overrides: {supervised: {" + override + "}}"))
    assert main(["run", str(path), "--profile", "smoke", "--methods", "supervised", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "method_overrides.supervised" in err and len(err) < 400
    assert not MlflowClient(mlflow_store).search_runs([e.experiment_id for e in MlflowClient(mlflow_store).search_experiments()])


@pytest.mark.parametrize(("seeds", "message"), [("4294967296", "[0, 2^32)"), ("-1", "not a non-negative integer")])
def test_seeds_outside_numpy_range_are_refused(mlflow_store: str, seeds: str, message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A seed of 2^32 used to train seed 0 again silently (numpy takes seeds modulo 2^32)."""
    from benchmarks.cli import main
    assert main(["run", "table2", "--profile", "smoke", "--methods", "supervised", "--seeds", seeds]) == 2
    assert message in capsys.readouterr().err


def _study_text(**changes: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "studies" / "table2.yaml").read_text()
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


FAULTS = {  # name: (extra args or None, environment, files to write {relative path: text}, expected message)
    "study name leaving the output folder": (["run", "{tmp}/evil.yaml"], {},
                                             {"evil.yaml": _study_text(**{"study: table2": "study: ../../x"})},
                                             "study '../../x'"),
    "report folder that is a file": (["report", "table2", "--profile", "smoke", "--out", "{tmp}/afile"], {},
                                     {"afile": "not a folder"}, "is a file"),
    "checkpoint folder that is a file": (["run", "table2", "--checkpoint-dir", "{tmp}/afile"], {},
                                         {"afile": "x"}, "not writable"),
    "paper profile without CUDA": (["run", "table2", "--profile", "paper", "--data", "{tmp}"], {}, {},
                                   "no CUDA device"),
    "heartbeat not a number": (["run", "table2"], {"ORGANBENCH_HEARTBEAT_S": "often"}, {},
                               "ORGANBENCH_HEARTBEAT_S='often'"),
    "stale timeout negative": (["run", "table2"], {"ORGANBENCH_STALE_AFTER_S": "-5"}, {}, "ORGANBENCH_STALE_AFTER_S"),
    "unknown profile": (["run", "table2", "--profile", "gpu"], {}, {}, "unknown profile 'gpu'"),
    "unknown study": (["report", "table99"], {}, {}, "unknown study 'table99'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_cli_paths_with_faults_end_in_one_line_never_a_traceback(fault: str, tmp_path: Path, tiny_cohort: Path,
                                                                  empty_store_file: Path) -> None:
    """The CLI as a user runs it (a subprocess): each fault gives exit 2, one line naming the cause, no
    traceback, no run in the store and nothing written outside the test's folder."""
    import shutil
    import sys
    args, env_extra, files, message = FAULTS[fault]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    shutil.copyfile(empty_store_file, tmp_path / "mlflow.db")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "run" and "--profile" not in args:
        args += ["--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised", "--no-progress"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "ORGANBENCH_CHECKPOINT_DIR": str(tmp_path / "ck"), **env_extra}
    before = set(Path(__file__).resolve().parents[1].glob("reports/out/*"))
    done = subprocess.run([sys.executable, "-m", "benchmarks", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and message in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    from mlflow.tracking import MlflowClient
    client = MlflowClient(store)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert set(Path(__file__).resolve().parents[1].glob("reports/out/*")) == before
    assert not (tmp_path.parent / "x").exists()


def test_intensity_window_of_zero_width_is_refused(cohort_copy: Path) -> None:
    """lo >= hi trained on constant (or NaN) images and FINISHED; now the dataset is refused."""
    meta_path = cohort_copy / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["intensity_window"] = [275.0, 275.0]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="intensity_window must be \\[low, high\\] with finite low < high"):
        load_dataset(cohort_copy)


def test_start_server_on_a_busy_port_says_so(tmp_path: Path) -> None:
    """A port held by another program: one line naming it, no server process left behind."""
    import socket
    from mlflow_server.server import ServerError, start
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = ServerConfig(port=port, root=tmp_path)
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is in use by another program"):
            start(config, wait_s=5)
    assert not config.pid_file.exists()


def test_ray_address_that_does_not_answer_fails_fast() -> None:
    """``--launcher ray --address`` at a closed port: a one-line error within seconds (ray.init used to
    wait for minutes, ignoring SIGTERM)."""
    import time
    from benchmarks.launchers import _check_ray_address
    started = time.time()
    with pytest.raises(ConfigError, match="no Ray head answers there"):
        _check_ray_address("127.0.0.1:9", timeout_s=2)
    with pytest.raises(ConfigError, match="expected host:port"):
        _check_ray_address("nowhere")
    assert time.time() - started < 10


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_cell_is_claimed_leaves_no_run_running(tiny_cohort: Path, mlflow_store: str,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture, signum: int) -> None:
    """The signal arrives between the claim run's creation and the claim's check (it stayed RUNNING):
    the claim completes, its run and the launch are KILLED with the reason, one line, exit 128 + signal,
    no iteration trained (no checkpoint)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    from benchmarks import claims
    from benchmarks.cli import main
    import sys

    def settle_then_signal() -> float:  # called by acquire() after it created the claim run
        if sys._getframe(1).f_code.co_name == "acquire":
            os.kill(os.getpid(), signum)
        return 0.0
    monkeypatch.setattr(claims, "settle_s", settle_then_signal)
    code = main(["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 128 + signum and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] and signal.Signals(signum).name in err
    client = MlflowClient(mlflow_store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], run_view_type=ViewType.ALL)
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"], err  # the cell and its launch
    cell = next(r for r in runs if "run_key" in r.data.tags)
    assert "while claiming" in cell.data.tags["killed_reason"]
    assert not list(Path(os.environ["ORGANBENCH_CHECKPOINT_DIR"]).glob("*/checkpoint.pt"))
