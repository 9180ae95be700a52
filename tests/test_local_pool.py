"""Several cells at once on this machine (``run --workers N`` / the profile's ``cells_at_once``):
every cell once, the numbers of a one-thread sequential run, a bad cell that fails alone, and a
Ctrl-C that stops every worker with its cell KILLED and resumable."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from benchmarks.cli import main
from benchmarks.config import load_profile
from benchmarks.local_pool import threads_per_worker
from tests.study_files import cell_runs, smoke_budget, write_study
from test_run_integrity import (finish, latest_checkpoint_step, launch, long_study, run_args, runs_of,
                                store, use_store, wait_for_checkpoint)


def test_threads_are_shared_out_and_the_cpu_profile_trains_two_cells_at_once() -> None:
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(2, cores=16) == 8
    assert threads_per_worker(5, cores=2) == 1  # never zero
    assert load_profile("cpu").cells_at_once == 2 and load_profile("smoke").cells_at_once == 1


def test_the_costliest_cells_are_handed_out_first(tiny_cohort: Path) -> None:
    """Iterations x the method's measured step-cost hint, costliest first, ties in the given
    order: TAK's 200 iterations (about 7x a supervised step) before the supervised bound's 400, SimiS
    and CReST (the same cost) in the order given, the fully supervised bound last."""
    from benchmarks.config import load_study
    from benchmarks.plan import StudyPlan
    from methods.registry import get_method, list_methods
    assert all(get_method(name).relative_step_cost > 0 for name in list_methods())
    plan = StudyPlan(load_study("budget-check"), load_profile("smoke"), ["fully", "simis", "crest", "tak", "supervised"],
                     data_dir=tiny_cohort, progress=False)
    cells = [plan.cell("fully", 0, 200), plan.cell("supervised", 0, 400), plan.cell("simis", 0, 200),
             plan.cell("crest", 0, 200), plan.cell("tak", 0, 200)]
    order = [(c.method, c.iterations) for c in plan.costliest_first(cells)]
    assert order == [("tak", 200), ("simis", 200), ("crest", 200), ("supervised", 400), ("fully", 200)]


def test_a_stop_that_comes_while_a_cell_finishes_keeps_the_next_queued_cell_from_starting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's pool pre-queues the next task, so cancelling the launch's pending cells does not
    reach it: a signal received while a cell was evaluating (deferred, the cell ends normally) must
    still stop that next cell before it starts (seen: a SIGTERM to the driver left one worker
    training a new cell)."""
    import benchmarks.launchers
    import benchmarks.local_pool as pool
    from benchmarks.interrupt import Interrupted
    monkeypatch.setattr(pool, "_STOP", [])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = []

    def evaluating_when_stopped(spec, signals):
        started.append(spec)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the deferral: recorded, not raised
        return {"status": "trained"}

    monkeypatch.setattr(benchmarks.launchers, "train_cell", evaluating_when_stopped)
    assert pool._train_in_worker("first cell") == {"status": "trained"}
    with pytest.raises(Interrupted, match="SIGTERM"):
        pool._train_in_worker("next cell")
    assert started == ["first cell"]
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_two_workers_train_every_cell_once_with_the_one_thread_numbers_and_a_bad_cell_fails_alone(
        tiny_cohort: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Five cells on two workers: the four good ones finish once each under one parent, in two
    processes with one thread each on a 2-core machine (tag ``torch_threads``); GA's fails alone
    when it is built (a 3 x 3 x 3 cube grid cannot cut the 32^3 smoke patch). The table equals
    the sequential launcher's at one thread."""
    study = write_study(tmp_path, "pool-study", budget=smoke_budget(12),
                        methods=["supervised", "mean_teacher", "ga"], method_overrides={"ga": {"cube_grid": [3, 3, 3]}},
                        seeds={"smoke": [0, 1], "cpu": [0], "paper": [0]})
    args = ["run", study, "--profile", "smoke", "--data", str(tiny_cohort), "--no-progress"]
    assert main([*args, "--workers", "2"]) == 2
    out = capsys.readouterr().out
    summary = out.strip().splitlines()[-1]
    assert "4 run(s) trained" in summary and "2 failed" in summary and "ga seed 0: ConfigError" in summary
    assert "[local] 6 cell(s), 2 at once" in out
    runs = cell_runs(mlflow_store, "pool-study")
    good = runs[runs["tags.method"] != "ga"]
    assert len(good) == 4 and set(good["status"]) == {"FINISHED"} and good["tags.run_key"].nunique() == 4
    assert set(runs.loc[runs["tags.method"] == "ga", "status"]) == {"FAILED"}
    assert runs["tags.mlflow.parentRunId"].nunique() == 1
    assert good["tags.claim.pid"].nunique() == 2  # two worker processes, neither of them this one
    assert set(good["tags.torch_threads"]) == {str(threads_per_worker(2))}
    pool_out = tmp_path / "pool-report"
    assert main(["report", study, "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(pool_out)]) == 0

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'sequential.db'}")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(2))  # the workers' arithmetic: the same numbers
    try:
        assert main([*args, "--methods", "supervised,mean_teacher", "--workers", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    sequential_out = tmp_path / "sequential-report"
    assert main(["report", study, "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(sequential_out)]) == 0
    assert (pool_out / "pool-study.csv").read_text() == (sequential_out / "pool-study.csv").read_text()


def test_ctrl_c_stops_every_worker_and_the_rerun_resumes(tiny_cohort: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          empty_store_file: Path) -> None:
    """SIGINT to the driver (the workers are out of the terminal's process group, so it is the only
    signal they get): exit 130, both cells and the launch KILLED with the reason, nothing left
    RUNNING, checkpoints kept; the rerun resumes both and finishes each once."""
    study = long_study(tmp_path, seeds={"smoke": [0, 1], "cpu": [0], "paper": [0]})
    env = store(tmp_path, "pool-sigint", empty_store_file)
    checkpoints = Path(env["ORGANBENCH_CHECKPOINT_DIR"])
    process = launch([*run_args(study, tiny_cohort), "--workers", "2"], env)
    wait_for_checkpoint(checkpoints, 5, process, timeout=180)
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 128 + signal.SIGINT and "Traceback" not in err, err
    runs = runs_of(env)
    assert "RUNNING" not in set(runs["status"]), runs[["status", "tags.method"]]
    cells = runs[runs["tags.run_key"].notna()]
    assert set(cells["status"]) <= {"KILLED", "FINISHED"} and (cells["status"] == "KILLED").any()
    assert all("SIGINT" in r for r in cells.loc[cells["status"] == "KILLED", "tags.killed_reason"])
    assert list(runs.loc[runs["tags.launch"] == "true", "status"]) == ["KILLED"]
    assert any(checkpoints.glob("*/checkpoint.pt"))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("ORGANBENCH_CHECKPOINT_DIR", str(checkpoints))
    assert main([*run_args(study, tiny_cohort), "--workers", "1"]) == 0  # any launcher resumes a pool's cells
    after = runs_of(env)
    finished = after[(after["tags.run_key"].notna()) & (after["status"] == "FINISHED")]
    assert len(finished) == 2 and finished["tags.run_key"].nunique() == 2
    assert finished["tags.resumed_from_step"].notna().any()


def test_a_worker_stopped_alone_stops_the_launch(tiny_cohort: Path, tmp_path: Path, empty_store_file: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """SIGTERM to one worker (not the driver, which is this process; a thread sends it): its cell stops
    at a step boundary, the driver stops the other worker the same way and exits 143; nothing stays
    RUNNING."""
    study = long_study(tmp_path, seeds={"smoke": [0, 1], "cpu": [0], "paper": [0]})
    env = store(tmp_path, "pool-worker-sigterm", empty_store_file)
    use_store(monkeypatch, env)
    signalled: list[int] = []

    def stop_one_worker_after_a_checkpoint() -> None:
        deadline = time.time() + 180
        client, checkpoints = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]), Path(env["ORGANBENCH_CHECKPOINT_DIR"])
        running = "attributes.status = 'RUNNING' and tags.run_key != ''"
        while time.time() < deadline and not signalled:
            experiment = client.get_experiment_by_name("table2") if latest_checkpoint_step(checkpoints) >= 5 else None
            claims = client.search_runs([experiment.experiment_id], running) if experiment else []
            if claims:
                worker = int(claims[0].data.tags["claim.pid"])
                assert worker != os.getpid()
                os.kill(worker, signal.SIGTERM)
                signalled.append(worker)
            time.sleep(0.05)

    stopper = threading.Thread(target=stop_one_worker_after_a_checkpoint, daemon=True)
    stopper.start()
    code = main([*run_args(study, tiny_cohort), "--workers", "2"])
    stopper.join(timeout=5)
    err = capsys.readouterr().err
    assert signalled, "no worker was running a cell after a checkpoint"
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    runs = runs_of(env)
    assert "RUNNING" not in set(runs["status"]), runs[["status", "tags.method"]]
    killed = runs[(runs["tags.run_key"].notna()) & (runs["status"] == "KILLED")]
    assert len(killed) >= 1 and all("SIGTERM" in r for r in killed["tags.killed_reason"])
