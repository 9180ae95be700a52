"""Several cells at once on one machine: worker processes that share its cores.

On a few CPU cores one training process uses its threads poorly (a V-Net step is many small
operations): measured on 2 cores of the AVX-512 BF16 kind, a step with 1 thread takes 1.4-1.6x
its time with 2 threads, and two 1-thread processes side by side each keep their 1-thread speed,
so two cells at once finish 1.2-1.4x sooner than one after the other
(docs/measured/2026-12-06-convergence-and-cells-at-once.md).

:func:`run_in_processes` is the local launcher with ``workers`` > 1 (``run --workers N``, or the
profile's ``cells_at_once``). Rules:

1. Each worker is a fresh process (``spawn``) with ``cores // workers`` intra-op threads (at least
   one), set before it trains anything; the run records them (tag ``torch_threads``).
2. A worker trains one cell at a time through :func:`benchmarks.launchers.train_cell`, the Ray
   launcher's task: it claims the cell in the tracking store first, so a cell is trained exactly
   once whatever else runs on the study.
3. The workers leave the terminal's process group: a Ctrl-C reaches the driver only, which
   forwards that one signal to every worker; each stops at its step boundary, marks its cell
   KILLED and keeps the checkpoint, and the driver raises :class:`benchmarks.interrupt.Interrupted`.
   A worker stopped by a signal sent to it alone stops the launch the same way. A signal that comes
   while a cell evaluates lets that cell finish and keeps the next cell queued to the worker from
   starting (the pool queues one ahead, beyond the reach of cancelling the launch's pending cells).
4. A cell whose worker raised is a ``failed`` outcome with the reason; the other cells go on.
5. The costliest cells are handed out first (:meth:`benchmarks.plan.StudyPlan.costliest_first`), so
   the last cell to start is a cheap one and no worker trains a long cell alone while the others
   sit idle.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from benchmarks.interrupt import HANDLED, Interrupted, StopSignals

if TYPE_CHECKING:
    from benchmarks.launch import Launch
    from benchmarks.launchers import CellSpec
    from benchmarks.plan import Cell
    from benchmarks.runner import StudyRunner


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Intra-op threads of each of ``workers`` processes sharing ``cores`` (default: this machine's).

    >>> threads_per_worker(2, cores=2), threads_per_worker(3, cores=16), threads_per_worker(4, cores=2)
    (1, 5, 1)
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


_STOP: list[int] = []  # in a worker: the stop signal it received while no cell was running


def _start_worker(threads: int) -> None:
    """Pool initializer: own process group, a recorded (never raised) stop signal (rule 3), and
    ``threads`` intra-op threads (rule 1)."""
    os.setpgrp()
    for sig in HANDLED:
        signal.signal(sig, lambda signum, frame: _STOP.append(signum))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch
    torch.set_num_threads(threads)


def _train_in_worker(spec: CellSpec) -> dict[str, Any]:
    """A worker's task: the cell inside a deferral from start to end, so a stop signal ends its
    training at a step boundary (KILLED, checkpoint kept) and never cuts the claim, the set-up or
    the evaluation short; a worker stopped before the cell began does not claim it."""
    from benchmarks.launchers import train_cell
    if _STOP:
        raise Interrupted(_STOP[0], " before the cell started")
    with StopSignals() as signals, signals.deferred():
        try:
            return train_cell(spec, signals)
        finally:  # a signal that came during the evaluation ends the cell normally: the next cell
            if signals.signum is not None:  # queued to this worker must not start
                _STOP.append(signals.signum)


def run_in_processes(runner: StudyRunner, launch: Launch, workers: int = 2) -> list[dict[str, Any]]:
    """Train the unfinished cells of ``launch`` in ``workers`` processes; one outcome dict per cell."""
    from benchmarks.launchers import CellSpec
    from benchmarks.run_record import say
    threads = threads_per_worker(workers)
    cells = runner.plan.costliest_first(launch.todo)  # rule 5
    say(f"[local] {len(cells)} cell(s), {workers} at once, {threads} thread(s) each")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads,))
    futures: dict[Future, Cell] = {}
    for cell in cells:
        spec = CellSpec(runner.study, runner.profile, cell.method, cell.seed, cell.run_key, str(runner.dataset.root),
                        runner.tracking_uri, launch.experiment_id, launch.parent_id, str(runner.checkpoints.root),
                        runner.keep_checkpoints)
        futures[pool.submit(_train_in_worker, spec)] = cell
    bar = runner.progress_bar(len(futures))
    results, pending, started = [], set(futures), time.time()
    try:
        with StopSignals() as signals, signals.deferred():
            while pending and not signals.should_stop():
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        results.append(_outcome(runner, future, futures[future]))
                    except KeyboardInterrupt as exc:  # a worker stopped by a signal of its own: stop them all
                        signals.signum = signals.signum or getattr(exc, "signum", signal.SIGTERM)
                    bar.update()
            if signals.should_stop():
                _stop_workers(pool, pending, signals.signum or signal.SIGTERM)
                raise Interrupted(signals.signum or signal.SIGTERM)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    say(f"[local] {len(results)} cell(s) in {time.time() - started:.0f} s: "
        + ", ".join(f"{sum(r['status'] == s for r in results)} {s}"
                    for s in ("trained", "finished", "busy", "diverged", "failed")))
    return results


def _stop_workers(pool: ProcessPoolExecutor, pending: set[Future], signum: int) -> None:
    """Rule 3: cancel the cells not started, send ``signum`` once to every worker, and wait until the
    running cells have stopped at their step boundary (their runs are then KILLED)."""
    for future in pending:
        future.cancel()
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    wait(pending)


def _outcome(runner: StudyRunner, future: Future, cell: Cell) -> dict[str, Any]:
    """A worker's outcome; an exception raised in it is a ``failed`` outcome with the reason (rule 4)."""
    from benchmarks.run_record import say
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - any error of one cell is that cell's outcome
        reason = f"{type(exc).__name__}: {exc}"
    say(f"[failed] {cell.name}: {reason}")
    return runner._outcome(cell, "failed", "", reason=reason)
