"""``--launcher slurm``: one Slurm job per cell through submitit (or, with ``local=True``, submitit's
local executor: the same jobs as subprocesses of this machine, which is how the tests run it).

Each job runs :func:`benchmarks.launchers.train_cell`: it claims its cell in the MLflow store exactly
as the sequential and Ray launchers do, so a cell is trained once whoever launches it. A job that Slurm
preempts or times out is requeued by submitit (:class:`CellJob` is checkpointable); the new attempt
claims the cell again and resumes from the cell's last checkpoint (``checkpoint_every``). A job killed
outright leaves its claim RUNNING; the next launch takes it over once its process is gone or its
heartbeat is stale, and resumes from the checkpoint in the same way.

Resources per job come from the profile (``gpus_per_cell``, ``cpus_per_cell``) and from the flags
(``--slurm-partition``, ``--slurm-time-min``); job logs go to ``--slurm-folder``
(default ``checkpoints/slurm``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.errors import ConfigError
from benchmarks.launchers import CellSpec, train_cell

if TYPE_CHECKING:
    from benchmarks.launch import Launch
    from benchmarks.runner import StudyRunner


class CellJob:
    """A cell as a submitit job: called with its :class:`CellSpec`; on preemption or timeout submitit
    calls :meth:`checkpoint`, which resubmits the same spec (the cell resumes from its own checkpoint)."""

    def __call__(self, spec: CellSpec) -> dict[str, Any]:
        return train_cell(spec)

    def checkpoint(self, spec: CellSpec) -> Any:
        import submitit
        return submitit.helpers.DelayedSubmission(CellJob(), spec)


def make_executor(folder: Path, profile: Any, local: bool, partition: str | None, time_min: int) -> Any:
    """A submitit executor for one cell per job (Slurm, or local subprocesses)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit (pip install submitit; requirements.txt has it)") from None
    folder.mkdir(parents=True, exist_ok=True)
    if local:
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=time_min)
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    executor.update_parameters(timeout_min=time_min, slurm_partition=partition, tasks_per_node=1, nodes=1,
                               cpus_per_task=max(1, math.ceil(profile.cpus_per_cell)),
                               gpus_per_node=math.ceil(profile.gpus_per_cell), slurm_signal_delay_s=120)
    return executor


def run_on_slurm(runner: StudyRunner, launch: Launch, folder: str | None = None, partition: str | None = None,
                 time_min: int = 24 * 60, local: bool = False, poll_s: float = 2.0) -> list[dict[str, Any]]:
    """Submit every unfinished cell of ``launch`` as a job and wait for them all; returns their outcomes
    (a job that raised is a ``failed`` outcome naming the error, as for the other launchers)."""
    from benchmarks.run_record import say
    if runner.tracking_uri.startswith("sqlite") and not local:
        say("[slurm] the jobs write to a SQLite store: every node must see the same file (a shared file "
            "system); an MLflow server (make mlflow, MLFLOW_TRACKING_URI) is safer for many nodes")
    executor = make_executor(Path(folder) if folder else runner.checkpoints.root / "slurm", runner.profile, local,
                             partition, time_min)
    specs = {cell.run_key: CellSpec(runner.study, runner.profile, cell.method, cell.seed, cell.run_key,
                                    str(runner.dataset.root), runner.tracking_uri, launch.experiment_id,
                                    launch.parent_id, str(runner.checkpoints.root), runner.keep_checkpoints)
             for cell in launch.todo}
    cells = {cell.run_key: cell for cell in launch.todo}
    jobs = {key: executor.submit(CellJob(), spec) for key, spec in specs.items()}
    say(f"[slurm] {len(jobs)} job(s) submitted" + (" (local executor)" if local else "")
        + (": " + ", ".join(str(job.job_id) for job in jobs.values()) if jobs else ""))
    results, started = [], time.time()
    try:
        pending = dict(jobs)
        while pending:
            for key in [k for k, job in pending.items() if job.done()]:
                job = pending.pop(key)
                try:
                    outcome = job.result()
                except Exception as exc:  # noqa: BLE001 - the job's own error, reported as a failed cell
                    reason = " ".join(str(exc).split())[-300:]
                    outcome = runner._outcome(cells[key], "failed", "", reason=reason)
                    say(f"[failed] {cells[key].name}: {reason}")
                results.append(outcome)
            if pending:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in jobs.values():
            job.cancel(check=False)
        raise
    say(f"[slurm] {len(results)} cell(s) in {time.time() - started:.0f} s: "
        + ", ".join(f"{sum(r['status'] == s for r in results)} {s}"
                    for s in ("trained", "finished", "busy", "diverged", "failed")))
    return results
