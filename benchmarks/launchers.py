"""Dispatching a study's cells: one function trains one cell (:func:`train_cell`), whichever engine runs it.

The sequential launcher (the default) calls :meth:`benchmarks.runner.StudyRunner.run_cell` cell after
cell. :func:`run_on_ray` submits every unfinished cell as a Ray task (``ray.remote`` with the
profile's ``cpus_per_cell`` / ``gpus_per_cell``); a task receives everything explicitly in a
:class:`CellSpec` (tracking URI, experiment id, parent run id, checkpoint folder), never through
the worker's environment. Cells are claimed in the tracking store as in the sequential launcher, so
two drivers on one study train each cell once. Ray re-runs a task whose worker died
(``max_retries``); the retry takes the dead claim over and resumes from the cell's checkpoint (the
checkpoint folder must be reachable from every node). A task that raises (e.g. a bad
configuration) is not retried: its cell is reported failed with the reason, the others go on. A
cell whose loss diverged is not an error: its run is recorded as diverged and its task returns.
With progress on, workers report their iterations to a :class:`ProgressBoard` actor and the driver
draws one bar per running cell under the bar over the cells (a worker's own output is not shown).
"""
from __future__ import annotations

import contextlib
import socket

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmarks.config import Profile, Study
from benchmarks.errors import ConfigError, TrackingError

if TYPE_CHECKING:
    from benchmarks.interrupt import StopSignals
    from benchmarks.launch import Launch
    from benchmarks.plan import Cell
    from benchmarks.runner import StudyRunner


@dataclass(frozen=True)
class CellSpec:
    """Everything a worker needs to train one cell (picklable; no reliance on the worker's environment)."""

    study: Study
    profile: Profile
    method: str
    seed: int
    run_key: str
    data_dir: str | None
    tracking_uri: str
    experiment_id: str
    parent_id: str | None
    checkpoint_dir: str
    keep_checkpoints: bool
    progress_board: Any = None  # a ProgressBoard actor handle, or None (no per-run bars)


class ProgressBoard:
    """The latest ``(phase, done, total)`` of every running cell, by run key: workers write, the driver
    reads (run as a Ray actor that asks for no CPU)."""

    def __init__(self) -> None:
        self.cells: dict[str, tuple[str, int, int]] = {}

    def update(self, run_key: str, phase: str, done: int, total: int) -> None:
        self.cells[run_key] = (phase, done, total)

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        return dict(self.cells)


class _BoardReporter:
    """A worker's ``on_progress``: sends to the board at most once a second, and waits for the send of
    a phase's last report, so the driver sees it when the task's result arrives."""

    def __init__(self, board: Any, interval_s: float = 1.0) -> None:
        self.board, self.interval_s, self.last = board, interval_s, 0.0

    def __call__(self, run_key: str, phase: str, done: int, total: int) -> None:
        import ray
        now = time.monotonic()
        if done >= total:
            ray.get(self.board.update.remote(run_key, phase, done, total))
        elif now - self.last >= self.interval_s:
            self.board.update.remote(run_key, phase, done, total)
        else:
            return
        self.last = now


class _RunBars:
    """One bar per running cell (positions 1, 2, ... under the bar over the cells), drawn from the board."""

    def __init__(self, board: Any, names: dict[str, str]) -> None:
        self.board, self.names = board, names
        self.bars: dict[str, Any] = {}
        self.positions: dict[str, int] = {}
        self.ended: set[str] = set()

    def refresh(self) -> None:
        import ray
        from tqdm import tqdm
        for key, (phase, done, total) in ray.get(self.board.snapshot.remote()).items():
            if key in self.ended:
                continue
            bar = self.bars.get(key)
            if bar is None:
                used = set(self.positions.values())
                self.positions[key] = next(p for p in range(1, len(used) + 2) if p not in used)
                bar = self.bars[key] = tqdm(total=total, initial=done, desc=self.names.get(key, key), unit="it",
                                            leave=False, position=self.positions[key], dynamic_ncols=True)
            bar.total = total
            if done > bar.n:
                bar.update(done - bar.n)  # through update(): the rate and ETA follow the reports
            bar.set_description_str(self.names.get(key, key) + (" evaluation" if phase == "evaluation" else ""),
                                    refresh=False)
            bar.refresh()

    def end(self, key: str, refresh: bool = True) -> None:
        """The cell's task returned: draw its last report, then remove its bar."""
        if refresh:
            self.refresh()
        self.ended.add(key)
        self.positions.pop(key, None)
        bar = self.bars.pop(key, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        """Draw the last reports once, then remove every bar."""
        if self.bars:
            self.refresh()
        for key in list(self.bars):
            self.end(key, refresh=False)


def train_cell(spec: CellSpec, signals: StopSignals | None = None) -> dict[str, Any]:
    """Train, evaluate and log one cell (claiming it first); returns its outcome dict.

    ``signals``: the caller's installed handlers (default: installed here, around the cell).

    The worker resolves the study itself and checks that it derives the very run key the driver
    sent (a worker on other code or other data would otherwise train a different cell)."""
    from benchmarks.claims import Heartbeat
    from benchmarks.interrupt import StopSignals
    from benchmarks.runner import StudyRunner
    reporter = _BoardReporter(spec.progress_board) if spec.progress_board is not None else None
    runner = StudyRunner(spec.study, spec.profile, [spec.method], [spec.seed], spec.data_dir, progress=False,
                         tracking_uri=spec.tracking_uri, checkpoint_dir=spec.checkpoint_dir,
                         keep_checkpoints=spec.keep_checkpoints, on_progress=reporter)
    cells = [c for c in runner.plan.cells() if c.run_key == spec.run_key]
    if not cells:
        raise ConfigError(f"worker derived other run keys than the driver for {spec.method} seed {spec.seed} "
                          f"(expected {spec.run_key}): is it running other code or other data?")
    with Heartbeat(runner.tracking_uri) as heartbeat, contextlib.ExitStack() as stack:
        if signals is None:
            signals = stack.enter_context(StopSignals())
        return runner.run_cell(cells[0], spec.experiment_id, spec.parent_id, heartbeat, signals)


def _check_tracking_for_cluster(uri: str, nodes: int) -> None:
    if nodes > 1 and not uri.startswith(("http://", "https://")):
        raise TrackingError(f"a Ray cluster of {nodes} nodes needs one MLflow tracking server, not {uri}: start one "
                            "(make mlflow, or --start-server) and set MLFLOW_TRACKING_URI to its URL")


def _check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A one-line ConfigError when ``address`` (``host:port`` of a Ray cluster's head, or ``auto``) does not
    accept a connection within ``timeout_s``: ``ray.init`` would otherwise wait for minutes and ignore
    SIGTERM, with the launch RUNNING."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ConfigError(f"--address {address[:80]!r}: expected host:port of a Ray head (ray start --head prints it)") from None
    except OSError as exc:
        raise ConfigError(f"--address {address[:80]}: no Ray head answers there ({exc.strerror or type(exc).__name__}); "
                          "start one with `ray start --head` or leave --address out for a local instance") from None


def run_on_ray(runner: StudyRunner, launch: Launch, address: str | None = None, max_retries: int = 2,
               local_cpus: int | None = None) -> list[dict[str, Any]]:
    """Submit every unfinished cell of ``launch`` as a Ray task and wait for them all.

    Args:
        address: an existing Ray cluster (``ray start --head`` prints it); None starts a local instance.
        max_retries: re-runs of a task whose worker process died (a raised exception is not retried).
        local_cpus: CPUs of the local instance (default: the machine's).
    """
    import ray
    from tqdm import tqdm

    from benchmarks.run_record import say
    if address and not ray.is_initialized():
        _check_ray_address(address)
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else local_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    _check_tracking_for_cluster(runner.tracking_uri, len([n for n in ray.nodes() if n.get("Alive")]))
    profile = runner.profile
    board = ray.remote(num_cpus=0)(ProgressBoard).remote() if runner.progress else None
    futures = _submit(runner, launch, max_retries, board)
    results = []
    bar = tqdm(total=len(futures), desc=f"{runner.study.study} [{profile.name}] cells on Ray", unit="cell",
               disable=not runner.progress, dynamic_ncols=True,
               bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed, ETA {remaining} {postfix}")
    runs = _RunBars(board, {c.run_key: c.name for c in futures.values()}) if board is not None else None
    pending, failed, started = list(futures), 0, time.time()
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0 if runs is not None else None)
            if not done:  # nothing returned within the second: redraw the running cells' bars
                runs.refresh()  # type: ignore[union-attr]
                continue
            cell = futures[done[0]]
            if runs is not None:
                runs.end(cell.run_key)
            outcome = _task_outcome(runner, done[0], cell)
            failed += outcome["status"] == "failed"
            results.append(outcome)
            bar.set_postfix_str(f"failed {failed}, running {min(len(pending), _slots(profile))}")
            bar.update()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if runs is not None:
            runs.close()
        bar.close()
    say(f"[ray] {len(results)} cell(s) in {time.time() - started:.0f} s: "
        + ", ".join(f"{sum(r['status'] == s for r in results)} {s}"
                    for s in ("trained", "finished", "busy", "diverged", "failed")))
    return results


def _submit(runner: StudyRunner, launch: Launch, max_retries: int, board: Any) -> dict[Any, Cell]:
    """One Ray task per unfinished cell of ``launch`` (object ref -> cell)."""
    import ray
    profile = runner.profile
    task = ray.remote(num_cpus=profile.cpus_per_cell, num_gpus=profile.gpus_per_cell,
                      max_retries=max_retries)(train_cell)
    futures = {}
    for cell in runner.plan.costliest_first(launch.todo):  # Ray starts queued tasks in submission order
        spec = CellSpec(runner.study, profile, cell.method, cell.seed, cell.run_key, str(runner.dataset.root),
                        runner.tracking_uri, launch.experiment_id, launch.parent_id, str(runner.checkpoints.root),
                        runner.keep_checkpoints, board)
        futures[task.remote(spec)] = cell
    return futures


def _task_outcome(runner: StudyRunner, ref: Any, cell: Cell) -> dict[str, Any]:
    """A finished task's outcome; an exception raised in the task, or a worker that died more often
    than its retries, is a ``failed`` outcome with the reason (said in one line)."""
    import ray
    from benchmarks.run_record import say
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # raised inside the task: not transient
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        reason = f"{type(cause).__name__}: {cause}"
    except ray.exceptions.RayError as exc:  # the worker died more often than max_retries
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    say(f"[failed] {cell.name}: {reason}")
    return runner._outcome(cell, "failed", "", reason=reason)


def _slots(profile: Profile) -> int:
    """Cells that can run at once on the Ray instance (by the resources each asks for)."""
    import ray
    resources = ray.cluster_resources()
    by_cpu = int(resources.get("CPU", 1) // max(profile.cpus_per_cell, 1e-9))
    by_gpu = int(resources.get("GPU", 0) // profile.gpus_per_cell) if profile.gpus_per_cell else by_cpu
    return max(1, min(by_cpu, by_gpu))

