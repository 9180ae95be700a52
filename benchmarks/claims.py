"""Exactly-once cells: a launcher claims a cell in the tracking store before training it.

A claim is a RUNNING MLflow run carrying the cell's ``run_key``, the claimant's host, boot id, pid
and process start time, and a ``heartbeat`` tag (Unix seconds) that a background thread refreshes.
:func:`acquire`:

1. a FINISHED run with the key -> the cell is done (:class:`Finished`);
2. a RUNNING run with the key whose claimant is alive -> someone else trains it (:class:`Busy`);
   a claim whose heartbeat is older than ``stale_after_s``, or whose process is gone from this
   very machine, is marked KILLED (``killed_reason`` says why) and no longer counts;
3. otherwise create our claim, wait ``settle_s``, look again: of all live claims the oldest
   (start time, then run id) wins, and the others delete their claim and report :class:`Busy`.

Every launcher applies the same rule to the same rows, so two launchers on one store (SQLite or a
server) agree on the winner. Across machines this assumes clocks agree to well within
``settle_s``; on one machine (the sequential launcher, a local Ray instance) it holds exactly.
Timing settings come from the environment: ``ORGANBENCH_HEARTBEAT_S`` (30),
``ORGANBENCH_STALE_AFTER_S`` (300), ``ORGANBENCH_CLAIM_SETTLE_S`` (1).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run, RunStatus, ViewType
from mlflow.tracking import MlflowClient

from benchmarks.config import env_seconds


def heartbeat_s() -> float:
    return env_seconds("ORGANBENCH_HEARTBEAT_S", 30.0)


def stale_after_s() -> float:
    return env_seconds("ORGANBENCH_STALE_AFTER_S", 300.0)


def settle_s() -> float:
    return env_seconds("ORGANBENCH_CLAIM_SETTLE_S", 1.0)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "unknown"


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot), '' when unknown: with the pid it
    identifies a process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return ""


def process_identity() -> dict[str, str]:
    """Claim tags that identify this process: host, boot id, pid and its start time."""
    pid = os.getpid()
    return {"claim.host": socket.gethostname(), "claim.boot_id": _boot_id(), "claim.pid": str(pid),
            "claim.pid_start": _process_start(pid)}


def _claimant_dead(tags: dict[str, str]) -> bool:
    """True when the claim was made on this machine (same host and boot) by a process that is gone."""
    me = process_identity()
    if tags.get("claim.host") != me["claim.host"] or tags.get("claim.boot_id") != me["claim.boot_id"]:
        return False
    try:
        pid = int(tags.get("claim.pid", ""))
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    started = _process_start(pid)
    if started:
        return bool(tags.get("claim.pid_start")) and started != tags["claim.pid_start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def staleness(run: Run, now: float | None = None) -> str:
    """Why a RUNNING run no longer counts as a live claim ('' when it does)."""
    now = time.time() if now is None else now
    tags = run.data.tags
    if _claimant_dead(tags):
        return f"its process {tags.get('claim.pid')} on {tags.get('claim.host')} is gone"
    try:
        beat = float(tags["heartbeat"])
    except (KeyError, ValueError):
        beat = run.info.start_time / 1000  # a run logged without heartbeats (older versions)
    age = now - beat
    return f"no heartbeat for {age:.0f} s" if age > stale_after_s() else ""


@dataclass(frozen=True)
class Claimed:
    run_id: str


@dataclass(frozen=True)
class Finished:
    run_id: str


@dataclass(frozen=True)
class Busy:
    run_id: str
    holder: str  # "host pid N, heartbeat X s ago"


def _runs_with_key(client: MlflowClient, experiment_id: str, run_key: str) -> list[Run]:
    key = run_key.replace("'", "\\'")
    return client.search_runs([experiment_id], filter_string=f"tags.run_key = '{key}'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)


def _holder(run: Run) -> str:
    tags = run.data.tags
    try:
        age = f"{time.time() - float(tags['heartbeat']):.0f} s ago"
    except (KeyError, ValueError):
        age = "never"
    return f"run {run.info.run_id} on {tags.get('claim.host', '?')} pid {tags.get('claim.pid', '?')}, heartbeat {age}"


def retire_stale(client: MlflowClient, runs: list[Run]) -> list[Run]:
    """Mark the stale RUNNING runs among ``runs`` KILLED; returns the live RUNNING ones."""
    live = []
    for run in runs:
        if run.info.status != "RUNNING":
            continue
        reason = staleness(run)
        if reason:
            client.set_tag(run.info.run_id, "killed_reason", f"stale claim taken over: {reason}")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        else:
            live.append(run)
    return live


def acquire(client: MlflowClient, experiment_id: str, run_key: str, run_name: str, tags: dict[str, str],
            parent_id: str | None = None) -> Claimed | Finished | Busy:
    """Claim the cell ``run_key`` (see the module docstring); the claim run gets ``tags`` too."""
    runs = _runs_with_key(client, experiment_id, run_key)
    done = [r for r in runs if r.info.status == "FINISHED"]
    if done:
        return Finished(done[0].info.run_id)
    live = retire_stale(client, runs)
    if live:
        return Busy(live[0].info.run_id, _holder(live[0]))
    claim_tags = {**tags, **process_identity(), "heartbeat": f"{time.time():.3f}", "run_key": run_key}
    if parent_id:
        claim_tags["mlflow.parentRunId"] = parent_id
    mine = client.create_run(experiment_id, run_name=run_name, tags=claim_tags).info.run_id
    time.sleep(settle_s())
    runs = _runs_with_key(client, experiment_id, run_key)
    done = [r for r in runs if r.info.status == "FINISHED"]
    live = [r for r in runs if r.info.status == "RUNNING" and (r.info.run_id == mine or not staleness(r))]
    winner = min(live, key=lambda r: (r.info.start_time, r.info.run_id)) if live else None
    if done or winner is None or winner.info.run_id != mine:
        client.set_tag(mine, "claim_lost", "true")
        client.set_terminated(mine, RunStatus.to_string(RunStatus.KILLED))
        client.delete_run(mine)
        return Finished(done[0].info.run_id) if done else Busy(winner.info.run_id, _holder(winner))
    return Claimed(mine)


class Heartbeat:
    """A daemon thread that sets ``heartbeat`` = now on every tracked run every ``interval`` seconds."""

    def __init__(self, tracking_uri: str, interval: float | None = None) -> None:
        self.client = MlflowClient(tracking_uri)
        self.interval = heartbeat_s() if interval is None else interval
        self.runs: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="organbench-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def track(self, run_id: str) -> None:
        with self._lock:
            self.runs.add(run_id)

    def untrack(self, run_id: str) -> None:
        with self._lock:
            self.runs.discard(run_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                runs = list(self.runs)
            for run_id in runs:
                try:
                    self.client.set_tag(run_id, "heartbeat", f"{time.time():.3f}")
                except Exception:  # a store hiccup must not kill training; the next beat retries
                    pass
