"""The Ray launcher on a local 2-CPU Ray cluster: every cell once under one parent, the sequential
launcher's numbers, retries that resume, concurrent drivers, and a bad cell that fails alone."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from benchmarks.cli import main
from benchmarks.config import PROJECT_ROOT
from tests.study_files import cell_runs, smoke_budget, write_study
from test_run_integrity import latest_checkpoint_step

ray = pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray head with 2 CPUs (each cell asks for 1: two workers run at once)."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    # Token authentication off explicitly: a token that an earlier local Ray instance left in
    # ~/.ray/auth_token would otherwise turn it on for this head while the test client runs without it.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    f"--temp-dir={temp}", "--disable-usage-stats"], check=True, env=env, capture_output=True,
                   timeout=180)
    yield f"127.0.0.1:{port}"
    subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def disconnect():
    """This process stays connected to the cluster from its first in-process launch to the module's end,
    as a long-lived driver would: Ray reuses its idle workers (each would otherwise import torch,
    MLflow and the harness again, about 10 s here). Nothing a cell needs travels in the worker's
    environment (its store, checkpoints and data are in its CellSpec)."""
    yield
    if ray.is_initialized():
        ray.shutdown()


def study_file(tmp_path: Path, name: str = "ray-study", budget: int = 12, **changes: object) -> str:
    """Table 2's study as ``name``: the labeled-only bound and Mean Teacher, smoke seeds 0 and 1."""
    return write_study(tmp_path, name, **{"methods": ["supervised", "mean_teacher"], "budget": smoke_budget(budget),
                                          "seeds": {"smoke": [0, 1], "cpu": [0], "paper": [0]}, **changes})


def test_ray_runs_every_cell_once_with_the_sequential_numbers_and_a_bad_cell_fails_alone(
        cluster: str, disconnect, tiny_cohort: Path, tmp_path: Path, mlflow_store: str,
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """Three cells on two workers: supervised's and Mean Teacher's finish, each once under one parent;
    GA's fails alone when it is built (a 3 x 3 x 3 cube grid cannot cut the 32^3
    smoke patch), with the reason in the summary, and is not retried. With progress on, the workers
    report their iterations to the driver (their own output is not forwarded), which draws a bar per
    running cell under the bar over the cells, each ending at the cell's last iteration. The table
    equals the one the sequential launcher renders for the same cells."""
    study = study_file(tmp_path, methods=["supervised", "mean_teacher", "ga"],
                       method_overrides={"ga": {"cube_grid": [3, 3, 3]}}, seeds={"smoke": [0], "cpu": [0], "paper": [0]})
    args = ["run", study, "--profile", "smoke", "--data", str(tiny_cohort)]
    assert main([*args, "--launcher", "ray", "--address", cluster]) == 2
    out, err = capfd.readouterr()
    assert "ray-study [smoke] cells on Ray" in err
    for method in ("supervised", "mean_teacher"):
        assert re.search(rf"{method} seed 0( evaluation)?: 100%\|[^\r\n]*\| 12/12", err), err[-2000:]
    summary = out.strip().splitlines()[-1]
    assert "2 run(s) trained" in summary and "1 failed" in summary and "ga seed 0: ConfigError" in summary
    assert "cube_grid" in summary
    runs = cell_runs(mlflow_store, "ray-study")
    good = runs[runs["tags.method"] != "ga"]
    assert len(good) == 2 and set(good["status"]) == {"FINISHED"} and good["tags.run_key"].nunique() == 2
    assert set(runs.loc[runs["tags.method"] == "ga", "status"]) == {"FAILED"} and (runs["tags.method"] == "ga").sum() == 1
    assert runs["tags.mlflow.parentRunId"].nunique() == 1
    assert good["tags.claim.pid"].nunique() >= 2  # two workers trained cells
    ray_out = tmp_path / "ray-report"
    assert main(["report", study, "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(ray_out)]) == 0

    sequential_store = f"sqlite:///{tmp_path / 'sequential.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sequential_store)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray worker with one CPU: the same arithmetic, the same numbers
    try:
        assert main([*args, "--methods", "supervised,mean_teacher", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    sequential_out = tmp_path / "sequential-report"
    assert main(["report", study, "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(sequential_out)]) == 0
    assert (ray_out / "ray-study.csv").read_text() == (sequential_out / "ray-study.csv").read_text()


def test_a_killed_worker_is_retried_and_its_cell_resumes(cluster: str, disconnect, tiny_cohort: Path, tmp_path: Path,
                                                         mlflow_store: str, isolated_run_state: Path) -> None:
    study = study_file(tmp_path, "ray-kill", budget=60, methods=["supervised"], seeds={"smoke": [0], "cpu": [0],
                                                                                       "paper": [0]})
    killed: list[int] = []

    def kill_the_worker_after_a_checkpoint() -> None:
        deadline = time.time() + 240
        client = mlflow.MlflowClient(mlflow_store)
        while time.time() < deadline and not killed:
            if latest_checkpoint_step(isolated_run_state) >= 10:
                exp = client.get_experiment_by_name("ray-kill")
                claims = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING' and "
                                            "tags.run_key != ''")
                if claims:
                    pid = int(claims[0].data.tags["claim.pid"])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_worker_after_a_checkpoint, daemon=True)
    killer.start()
    assert main(["run", study, "--profile", "smoke", "--data", str(tiny_cohort), "--no-progress", "--launcher", "ray",
                 "--address", cluster, "--max-retries", "2"]) == 0
    killer.join(timeout=5)
    assert killed, "the worker was not killed (it finished first?)"
    runs = cell_runs(mlflow_store, "ray-kill")
    assert sorted(runs["status"]) == ["FINISHED", "KILLED"]
    dead = runs[runs["status"] == "KILLED"].iloc[0]
    assert dead["tags.claim.pid"] == str(killed[0]) and "is gone" in dead["tags.killed_reason"]
    finished = runs[runs["status"] == "FINISHED"].iloc[0]
    assert int(finished["tags.resumed_from_step"]) >= 10  # the retry resumed from the checkpoint


def test_two_drivers_at_once_train_every_cell_once(cluster: str, tiny_cohort: Path, tmp_path: Path) -> None:
    """Two driver processes launch the same one-cell study at once: both submit it, exactly one of
    them trains it. (Last in the module: their workers push this process's idle ones out of Ray's pool.)"""
    study = study_file(tmp_path, "ray-two-drivers", budget=12, methods=["supervised"],
                       seeds={"smoke": [0], "cpu": [0], "paper": [0]})
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'two.db'}",
           "ORGANBENCH_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "ORGANBENCH_CLAIM_SETTLE_S": "1"}
    command = [sys.executable, "-m", "benchmarks", "run", study, "--profile", "smoke", "--data", str(tiny_cohort),
               "--no-progress", "--launcher", "ray", "--address", cluster]
    drivers = [subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [d.communicate(timeout=600) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], [e for _, e in outputs]
    runs = cell_runs(env["MLFLOW_TRACKING_URI"], "ray-two-drivers")
    finished = runs[runs["status"] == "FINISHED"]
    assert len(finished) == 1 and len(runs) == 1  # one claim won, none left behind
    trained = sum(int(out.strip().splitlines()[-1].split(": ")[1].split()[0]) for out, _ in outputs)
    assert trained == 1  # the two summaries together: the cell trained by exactly one driver
