"""Sliding-window inference with the reference codes' window grid and uniform averaging (spec 3.1).

The reference loop: per axis ``n = ceil((S - P) / stride) + 1`` windows starting at
``min(stride * i, S - P)``, softmax of every window summed and divided by the per-voxel count,
zero padding (centred) when ``S < P``. MONAI's ``sliding_window_inference(mode="constant")`` makes the
same grid when the per-axis overlap gives ``int(P * (1 - overlap)) == stride``; we pass
``overlap = 1 - (stride + 0.5) / P`` (0 when ``stride == P``) so float truncation cannot shift
the interval.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference


def reference_overlap(patch: Sequence[int], stride: Sequence[int]) -> list[float]:
    """Per-axis MONAI overlap that reproduces the reference ``stride`` for window size ``patch``."""
    for p, s in zip(patch, stride):
        if not 0 < s <= p:
            raise ValueError(f"stride {tuple(stride)} must be in (0, patch] for patch {tuple(patch)}")
    return [0.0 if s == p else 1.0 - (s + 0.5) / p for p, s in zip(patch, stride)]


@torch.no_grad()
def sliding_window_probs(image: torch.Tensor, predict_logits: Callable[[torch.Tensor], torch.Tensor],
                         patch: Sequence[int], stride: Sequence[int], sw_batch_size: int = 4) -> torch.Tensor:
    """Softmax probabilities ``(B, C, D, H, W)`` for ``image`` ``(B, 1, D, H, W)``.

    ``predict_logits`` maps a window batch ``(N, 1, *patch)`` to logits ``(N, C, *patch)``; for
    co-training methods it returns the mean of both networks' logits (the reference does the same).
    """
    return sliding_window_inference(image, list(patch), sw_batch_size, lambda x: predict_logits(x).softmax(1),
                                    overlap=reference_overlap(patch, stride), mode="constant",
                                    padding_mode="constant", cval=0.0)


def window_count(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> int:
    """Number of windows the reference grid uses for a volume of ``shape`` (after padding to ``patch``)."""
    total = 1
    for s, p, st in zip(shape, patch, stride):
        s = max(s, p)
        total *= -(-(s - p) // st) + 1
    return total
