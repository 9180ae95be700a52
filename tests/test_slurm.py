"""``--launcher slurm`` with submitit's local executor (the same jobs as subprocesses): every cell of a
smoke study trained exactly once, and a cell whose job was killed resumes from its checkpoint."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")

from benchmarks.cli import main  # noqa: E402
from test_run_integrity import long_study, runs_of, store, test_metrics, use_store  # noqa: E402

pytestmark = pytest.mark.slow


def slurm_args(study: str, cohort: Path, folder: Path) -> list[str]:
    return ["run", study, "--profile", "smoke", "--data", str(cohort), "--no-progress", "--launcher", "slurm",
            "--slurm-local", "--slurm-folder", str(folder), "--slurm-time-min", "10"]


def test_slurm_local_trains_every_cell_once_with_the_sequential_numbers(
        tiny_cohort: Path, tmp_path: Path, empty_store_file: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Two cells as two jobs: both FINISHED under one launch; a second launch trains nothing; the
    numbers equal those of the sequential launcher on another store."""
    study = long_study(tmp_path, budget=12, methods=["supervised", "mean_teacher"])
    env = store(tmp_path, "slurm", empty_store_file)
    use_store(monkeypatch, env)
    assert main(slurm_args(study, tiny_cohort, tmp_path / "jobs")) == 0
    out = capsys.readouterr().out
    assert "[slurm] 2 job(s) submitted (local executor)" in out and "2 trained" in out
    runs = runs_of(env)
    cells = runs[runs["tags.run_key"].notna()]
    assert sorted(cells["tags.method"]) == ["mean_teacher", "supervised"] and set(cells["status"]) == {"FINISHED"}
    assert not set(cells["tags.claim.pid"]) & {str(os.getpid())}  # trained by the jobs, not by this process
    assert main(slurm_args(study, tiny_cohort, tmp_path / "jobs")) == 0
    assert "0 run(s) trained, 2 already finished" in capsys.readouterr().out
    assert len(runs_of(env)) == len(runs)  # nothing new
    sequential = store(tmp_path, "sequential", empty_store_file)
    use_store(monkeypatch, sequential)
    assert main(["run", study, "--profile", "smoke", "--data", str(tiny_cohort), "--no-progress"]) == 0
    ours, theirs = runs_of(env), runs_of(sequential)
    for method in ("supervised", "mean_teacher"):
        assert test_metrics(ours[ours["tags.method"] == method]) == test_metrics(theirs[theirs["tags.method"] == method])


def _job_processes(folder: Path) -> list[int]:
    """Pids of the local executor's job processes (their command line names the job folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "submitit" in command and str(folder) in command:
                pids.append(int(entry.name))
    return pids


def test_a_killed_job_resumes_from_its_checkpoint(tiny_cohort: Path, tmp_path: Path, empty_store_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """The job is SIGKILLed after its first checkpoint (the driver is this process; a thread kills the
    job): that launch reports the cell failed (exit 2, no traceback); the next launch takes the dead
    claim over and resumes the cell from the checkpoint."""
    study = long_study(tmp_path)
    env = store(tmp_path, "killed", empty_store_file)
    use_store(monkeypatch, env)
    checkpoints = Path(env["ORGANBENCH_CHECKPOINT_DIR"])
    folder = tmp_path / "jobs"
    killed: list[int] = []

    def kill_the_job_after_its_first_checkpoint() -> None:
        deadline = time.time() + 180
        while not any(checkpoints.glob("*/checkpoint.pt")) and time.time() < deadline:
            time.sleep(0.05)
        for pid in _job_processes(folder):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_the_job_after_its_first_checkpoint, daemon=True)
    killer.start()
    code = main(slurm_args(study, tiny_cohort, folder))
    killer.join(timeout=5)
    out, err = capsys.readouterr()
    assert killed, "no checkpoint before the job ended"
    assert code == 2 and "Traceback" not in err and "1 failed" in out, (out[-1500:], err[-1500:])
    assert main(slurm_args(study, tiny_cohort, folder)) == 0
    runs = runs_of(env)
    cells = runs[runs["tags.run_key"].notna()]
    finished = cells[cells["status"] == "FINISHED"]
    assert len(finished) == 1 and int(finished["tags.resumed_from_step"].iloc[0]) >= 5
