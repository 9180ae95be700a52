"""A launch of a study, as the runner and its dispatchers (sequential, Ray, Slurm) share it: the
launch record, the store queries made once per launch, and the checks made before any run exists."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from benchmarks.checkpoint import CheckpointStore
from benchmarks.claims import Heartbeat, heartbeat_s, retire_stale, settle_s, stale_after_s, staleness
from benchmarks.config import Profile
from benchmarks.errors import ConfigError
from benchmarks.plan import Cell
from benchmarks.interrupt import StopSignals
from benchmarks.tracking import RunLog


@dataclass
class Launch:
    """One launch of a study: its experiment, the requested cells, those already finished (run id or
    None), those whose run diverged (run key -> run id and reason; not trained again) and the parent
    run (None when nothing is left to train)."""

    experiment_id: str
    cells: list[Cell]
    finished: dict[str, str | None]
    parent: RunLog | None = None
    diverged: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if not self.finished[c.run_key] and c.run_key not in self.diverged]

    @property
    def parent_id(self) -> str | None:
        return self.parent.run_id if self.parent else None


def diverged_reason(step: int | str) -> str:
    """How a diverged cell is reported (CLI summary, skip line)."""
    return f"non-finite loss at step {step}"


def finished_run(client: MlflowClient, experiment_id: str, run_key: str) -> str | None:
    """The id of a FINISHED run of ``run_key`` in the experiment, or None."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.run_key = '{run_key}' and "
                              "attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


def diverged_runs(client: MlflowClient, experiment_id: str, run_keys: set[str]) -> dict[str, tuple[str, str]]:
    """Run key -> (run id, reason) of the newest diverged run, for those of ``run_keys`` that have one
    (one query for the launch)."""
    if not run_keys:
        return {}
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FAILED'",
                              order_by=["attributes.start_time ASC"], max_results=50_000)
    return {run.data.tags["run_key"]: (run.info.run_id, diverged_reason(run.data.tags["diverged_at_step"]))
            for run in runs if "diverged_at_step" in run.data.tags and run.data.tags.get("run_key") in run_keys}


def retire_stale_launches(client: MlflowClient, experiment_id: str) -> None:
    """Launch runs left RUNNING by a launcher that died (kill -9, power loss) become KILLED."""
    runs = client.search_runs([experiment_id], filter_string="tags.launch = 'true' and "
                              "attributes.status = 'RUNNING'", max_results=1000)
    retire_stale(client, [r for r in runs if staleness(r)])


def check_device(profile: Profile) -> None:
    """A one-line ConfigError when the profile trains on CUDA and this machine has none."""
    if profile.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"profile {profile.name!r} trains on {profile.device}, and this machine has no CUDA device; "
                          "use --profile cpu (or smoke) here")


def preflight(profile: Profile, checkpoints: CheckpointStore) -> None:
    """What a launch needs besides its study and data, checked before any run exists: the profile's
    device, the claim timing variables, a writable checkpoint folder (each a one-line ConfigError)."""
    check_device(profile)
    heartbeat_s(), stale_after_s(), settle_s()
    checkpoints.check_writable()


def staleness_poll() -> float:
    """Seconds between looks at a cell another launcher holds (``--wait``): the heartbeat interval."""
    return heartbeat_s()


def run_sequential(runner: Any, launch: Launch, heartbeat: Heartbeat, signals: StopSignals) -> list[dict[str, Any]]:
    """The default dispatch: the launch's cells one after another in this process (``runner`` is the
    :class:`benchmarks.runner.StudyRunner`); with ``runner.wait``, cells held elsewhere are retried."""
    overall = runner.progress_bar(len(launch.todo))
    results = []
    try:
        pending = launch.todo
        while pending:
            waiting = []
            for cell in pending:
                outcome = runner.run_cell(cell, launch.experiment_id, launch.parent_id, heartbeat, signals)
                if outcome["status"] == "busy" and runner.wait:
                    waiting.append(cell)
                else:
                    results.append(outcome)
                    overall.update()
            if waiting:
                time.sleep(min(10.0, max(1.0, staleness_poll())))
            pending = waiting
    finally:
        overall.close()
    return results
