"""Batches prepared ahead of the training step, on a background thread.

:class:`PrefetchingSampler` wraps a :class:`~benchmarks.training.TwoStreamSampler`: while the step runs,
the thread crops and stacks the next ``depth`` batches (and, on a GPU, copies them from pinned memory
without blocking). The inner sampler still draws its batches one after another from its own
generator, so the batches are bit-identical to the unwrapped sampler's for a given seed, and the run
key does not depend on prefetching. :meth:`state` is the inner state *after the batches handed out*
(not after the prefetched ones), so a checkpoint resumes with the very next batch.

>>> import numpy as np
>>> from benchmarks.data import Case
>>> from benchmarks.training import TwoStreamSampler
>>> cases = [Case(f"c{i}", np.random.default_rng(i).random((20, 20, 20), dtype=np.float32),
...               np.zeros((20, 20, 20), np.uint8), (1.0, 1.0, 1.0)) for i in range(4)]
>>> plain = TwoStreamSampler(cases[:2], cases[2:], 2, 2, (16, 16, 16), seed=0)
>>> ahead = PrefetchingSampler(TwoStreamSampler(cases[:2], cases[2:], 2, 2, (16, 16, 16), seed=0), depth=2)
>>> all(bool((plain.next().image_u == ahead.next().image_u).all()) for _ in range(5))
True
>>> ahead.close()
"""
from __future__ import annotations

import collections
import concurrent.futures
import copy
from typing import Any

from methods.base import Batch


class PrefetchingSampler:
    """``next()`` / ``state()`` / ``load_state()`` as the wrapped sampler, ``depth`` batches ahead."""

    def __init__(self, sampler: Any, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.sampler, self.depth = sampler, depth
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self._fill()

    def _draw(self) -> tuple[dict[str, Any], Batch]:
        """On the worker thread: the inner state before this batch, and the batch."""
        before = copy.deepcopy(self.sampler.state())
        return before, self.sampler.next()

    def _fill(self) -> None:
        while len(self._pending) < self.depth:
            self._pending.append(self._pool.submit(self._draw))

    def next(self) -> Batch:
        _, batch = self._pending.popleft().result()
        self._fill()
        return batch

    def state(self) -> dict[str, Any]:
        """The inner sampler's state after the batches handed out so far."""
        return copy.deepcopy(self._pending[0].result()[0])

    def load_state(self, state: dict[str, Any]) -> None:
        for future in self._pending:
            future.result()
        self._pending.clear()
        self.sampler.load_state(state)
        self._fill()

    def close(self) -> None:
        """Stop the thread once the pending batches are drawn (:meth:`state` stays valid)."""
        self._pool.shutdown(wait=True)
