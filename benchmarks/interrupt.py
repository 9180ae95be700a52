"""SIGINT / SIGTERM during a launch: stop at a step boundary, keep the state, say so in one line.

Inside :meth:`StopSignals.deferred` (the training loop) the first signal only records a stop
request; the loop checkpoints at the end of the current step and stops. Anywhere else, or on a
second signal, :class:`Interrupted` is raised at once. The runner marks the cell's run and the
launch KILLED; the CLI prints one line and exits with ``128 + signal number``.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Any, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The launch was stopped by a signal (a KeyboardInterrupt, so ``except Exception`` cannot swallow it)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.detail = signum, detail

    def __reduce__(self) -> tuple[type, tuple[int, str]]:  # crosses process boundaries (benchmarks.local_pool)
        return (Interrupted, (self.signum, self.detail))

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager installing the SIGINT / SIGTERM handlers (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum  # recorded even when raised: an exception raised inside a finaliser is
            # dropped by Python, and the next should_stop() still sees the request
        if self._deferring and first:
            return  # the training loop stops at the end of this step
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, a first signal becomes a stop request (see :meth:`should_stop`); nests."""
        previous, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = previous

    def should_stop(self) -> bool:
        return self.signum is not None
