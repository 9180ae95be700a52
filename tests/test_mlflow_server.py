"""A real ``mlflow server``: start/health/stop, a study logged through it, four concurrent writers."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from benchmarks.cli import main
from mlflow_server.server import ServerConfig, healthy, start, status, stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    config = ServerConfig(port=free_port(), root=tmp_path_factory.mktemp("mlflow-server"))
    url = start(config)
    yield config, url
    stop(config)


def test_start_is_healthy_and_idempotent(server) -> None:
    config, url = server
    assert healthy(url) and config.pid_file.is_file()
    assert start(config) == url  # already running: reported, not started twice
    assert "healthy" in status(config)


def test_study_logs_through_the_server(server, tiny_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert main(["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised",
                 "--no-progress"]) == 0
    mlflow.set_tracking_uri(url)
    runs = mlflow.search_runs(experiment_names=["table2"], filter_string="attributes.status = 'FINISHED'")
    cells = runs[runs["tags.run_key"].notna()]
    assert len(cells) == 1 and cells["metrics.test/dice_mean"].notna().all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(cells["run_id"].iloc[0], "eval")}
    assert "eval/per_case.csv" in artifacts  # artifacts go through the server's proxy


WORKER = textwrap.dedent("""
    import sys, mlflow
    worker = int(sys.argv[1])
    mlflow.set_experiment("concurrency")
    for r in range(2):
        with mlflow.start_run(run_name=f"w{worker}-r{r}", tags={"worker": str(worker)}):
            mlflow.log_params({f"p{i}": f"{worker}-{r}-{i}" for i in range(10)})
            for step in range(20):
                mlflow.log_metrics({f"m{k}": worker * 1000 + r * 100 + step + k / 10 for k in range(5)}, step=step)
""")


def test_four_concurrent_writers_lose_nothing(server, tmp_path: Path) -> None:
    _, url = server
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    workers = [subprocess.Popen([sys.executable, str(script), str(w)], env=env, stderr=subprocess.PIPE, text=True)
               for w in range(4)]
    for process in workers:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    mlflow.set_tracking_uri(url)
    runs = mlflow.search_runs(experiment_names=["concurrency"])
    assert len(runs) == 8 and set(runs["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient()
    for run in runs.itertuples():
        data = client.get_run(run.run_id).data
        worker, r = int(data.tags["worker"]), int(data.tags["mlflow.runName"][-1])
        assert data.params == {f"p{i}": f"{worker}-{r}-{i}" for i in range(10)}
        for k in range(5):
            history = client.get_metric_history(run.run_id, f"m{k}")
            assert sorted(m.step for m in history) == list(range(20))
            assert {m.value for m in history} == {worker * 1000 + r * 100 + s + k / 10 for s in range(20)}


def test_stop_ends_exactly_that_process(tmp_path: Path) -> None:
    config = ServerConfig(port=free_port(), root=tmp_path)
    start(config)
    pid = int(__import__("json").loads(config.pid_file.read_text())["pid"])
    assert stop(config) is True
    assert not healthy(config.url) and not config.pid_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert stop(config) is False
