"""Sliding-window inference with the reference codes' window grid and uniform averaging (docs/algorithms.md §3.1).

The reference loop (TAK/GA ``test_single_case``): zero padding (centred) when ``S < P``; per axis
``n = ceil((S - P) / stride) + 1`` windows starting at ``min(stride * i, S - P)``; the softmax of
every window summed and divided by the per-voxel window count. :func:`sliding_window_probs` runs
that grid in batches of windows. ``tests/test_inference.py`` checks it against the loop written out
and against MONAI's ``sliding_window_inference`` with the overlap of :func:`reference_overlap`,
which reproduces the same grid. MONAI is not imported here: importing it loads its whole package
tree (about 11 s per process on the 2-core machine), more than a smoke run's training.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def reference_overlap(patch: Sequence[int], stride: Sequence[int]) -> list[float]:
    """Per-axis MONAI overlap that reproduces the reference ``stride`` for window size ``patch``
    (``int(P * (1 - overlap)) == stride``; ``stride + 0.5`` so float truncation cannot shift it)."""
    for p, s in zip(patch, stride):
        if not 0 < s <= p:
            raise ValueError(f"stride {tuple(stride)} must be in (0, patch] for patch {tuple(patch)}")
    return [0.0 if s == p else 1.0 - (s + 0.5) / p for p, s in zip(patch, stride)]


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets along one axis of (padded) length ``size``: ``min(stride * i, size - patch)``.

    >>> window_starts(40, 16, 8)
    [0, 8, 16, 24]
    >>> window_starts(16, 16, 8)
    [0]
    """
    return [min(stride * i, size - patch) for i in range(math.ceil((size - patch) / stride) + 1)]


@torch.no_grad()
def sliding_window_probs(image: torch.Tensor, predict_logits: Callable[[torch.Tensor], torch.Tensor],
                         patch: Sequence[int], stride: Sequence[int], sw_batch_size: int = 4) -> torch.Tensor:
    """Softmax probabilities ``(B, C, D, H, W)`` for ``image`` ``(B, 1, D, H, W)``.

    ``predict_logits`` maps a window batch ``(N, 1, *patch)`` to logits ``(N, C, *patch)``; for
    co-training methods it returns the mean of both networks' logits (the reference does the same).
    Windows are evaluated ``sw_batch_size`` at a time.
    """
    reference_overlap(patch, stride)  # validates the stride
    shape = image.shape[2:]
    pads = [max(p - s, 0) for s, p in zip(shape, patch)]
    if any(pads):
        image = F.pad(image, [v for pad in reversed(pads) for v in (pad // 2, pad - pad // 2)])
    size = image.shape[2:]
    grid = list(itertools.product(*(window_starts(s, p, st) for s, p, st in zip(size, patch, stride))))
    count = torch.zeros(size, device=image.device)
    for x, y, z in grid:
        count[x:x + patch[0], y:y + patch[1], z:z + patch[2]] += 1
    outputs = []
    for volume in image:
        total: torch.Tensor | None = None
        for first in range(0, len(grid), sw_batch_size):
            chunk = grid[first:first + sw_batch_size]
            windows = torch.stack([volume[:, x:x + patch[0], y:y + patch[1], z:z + patch[2]] for x, y, z in chunk])
            probs = predict_logits(windows).softmax(1)
            if total is None:
                total = torch.zeros((probs.shape[1], *size), device=image.device, dtype=probs.dtype)
            for (x, y, z), window_probs in zip(chunk, probs):
                total[:, x:x + patch[0], y:y + patch[1], z:z + patch[2]] += window_probs
        outputs.append(total / count)
    out = torch.stack(outputs)
    crop = tuple(slice(pad // 2, pad // 2 + s) for pad, s in zip(pads, shape))
    return out[(..., *crop)]


def window_count(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> int:
    """Number of windows the reference grid uses for a volume of ``shape`` (after padding to ``patch``)."""
    total = 1
    for s, p, st in zip(shape, patch, stride):
        s = max(s, p)
        total *= -(-(s - p) // st) + 1
    return total
