"""``adsh``: adaptive thresholding (Adsh, Guo & Li, ICML 2022) as adapted in the DHC repository
(``code/train_adsh.py``; docs/algorithms.md §4.11).

CPS (A Kaiming, B Xavier), supervised loss unweighted ``DC_and_CE``. Each network buffers the softmax
maps of its own unlabeled outputs until ``u_len // 4`` samples are held (``u_len``: the number of
unlabeled cases); at the next iteration it sets per-class thresholds from the buffer and starts
refilling it:

- ``m``: the class predicted on most buffered voxels; ``rho = #{p_m > 0.9} / #{voxels predicted m}``;
- ``tau_i``: the ``floor(rho n_i)``-th largest ``p_i`` over **all** buffered voxels (0-based),
  ``n_i`` the number of voxels predicted ``i``; ``tau = 0`` until the first update.

Each network's mask ``M[c] = [p_c > tau_c]`` (its own probabilities, per class channel, whole batch)
multiplies the **other** network's logits before the pseudo-label CE (faithful to the reference):
``CE(z_A * M_B, argmax z_B) + CE(z_B * M_A, argmax z_A)``, weighted by ``w rampup(t, T)``.
Test: mean logits of A and B.

Faithful details kept: the slot the reference never writes when the buffer length and the batch do
not divide (an all-zero softmax map, counted as background) stays in the buffer; the buffer is not
cleared between updates. Departures: the buffer has room for one unlabeled batch plus one slot, so
that it stores at least one batch between updates (the reference needs ``u_len >= 8`` for that); a rank past the last voxel takes the smallest score (the reference would raise
an IndexError when one class is predicted everywhere with every voxel above 0.9).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from methods.base import Batch
from methods.common.cotraining import CoTrainingConfig, TwoNetMethod
from methods.common.kernels import class_argmax
from methods.common.losses import dice_and_ce
from methods.registry import register


@dataclass
class AdshConfig(CoTrainingConfig):
    major_threshold: float = 0.9
    """Confidence that defines ``rho`` on the majority class (reference script: 0.9)."""
    buffer_fraction: int = 4
    """The buffer holds ``u_len // buffer_fraction`` unlabeled samples (reference: 4)."""


class AdaptiveThresholds:
    """One network's buffer of unlabeled softmax maps and its per-class thresholds (docs/algorithms.md §4.11)."""

    def __init__(self, num_classes: int, length: int, major_threshold: float) -> None:
        self.num_classes, self.length, self.major_threshold = num_classes, length, major_threshold
        self.scores: torch.Tensor | None = None  # (length, C, *S), allocated at the first call
        self.filled = 0
        self.thresholds = torch.zeros(num_classes)

    def observe(self, logits_unlabeled: torch.Tensor) -> torch.Tensor:
        """Buffer this batch's softmax maps, or (buffer full) update the thresholds from the buffer and
        restart filling it; returns the current thresholds (C,)."""
        if self.scores is None:
            self.scores = torch.zeros(self.length, *logits_unlabeled.shape[1:], device=logits_unlabeled.device)
            self.thresholds = self.thresholds.to(logits_unlabeled.device)
        if self.filled < self.length - 1:
            probs = F.softmax(logits_unlabeled.detach().float(), dim=1)[: self.length - self.filled]
            self.scores[self.filled:self.filled + probs.shape[0]] = probs
            self.filled += logits_unlabeled.shape[0]
            return self.thresholds
        self.thresholds = self.thresholds_from(self.scores, self.major_threshold)
        self.filled = 0
        return self.thresholds

    @staticmethod
    def thresholds_from(scores: torch.Tensor, major_threshold: float) -> torch.Tensor:
        """Per-class thresholds of buffered softmax maps ``scores`` (N, C, *S).

        >>> p = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]).T.reshape(1, 2, 4)
        >>> AdaptiveThresholds.thresholds_from(p, 0.9).tolist()  # rho = 1/2; n = (2, 2): 2nd largest
        [0.6000000238418579, 0.699999988079071]
        """
        num_classes = scores.shape[1]
        flat = scores.transpose(0, 1).reshape(num_classes, -1)  # (C, N * V)
        counts = torch.bincount(flat.argmax(0), minlength=num_classes).float()
        major = int(counts.argmax())
        rho = ((flat[major] > major_threshold).sum().float() + 1e-8) / (counts[major] + 1e-8)
        thresholds = torch.zeros(num_classes, device=scores.device)
        for cls in range(num_classes):
            rank = min(int(rho * counts[cls]), flat.shape[1] - 1)
            thresholds[cls] = torch.kthvalue(flat[cls], flat.shape[1] - rank).values  # rank-th largest
        return thresholds


def class_mask(logits: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``[softmax(z)_c > tau_c]`` per class channel, (B, C, *S) float."""
    shape = (1, -1) + (1,) * (logits.dim() - 2)
    return (F.softmax(logits.detach(), dim=1) > thresholds.view(shape)).float()


@register("adsh", title="Adsh", group="imbalance", version="1", config=AdshConfig)
class Adsh(TwoNetMethod):
    relative_step_cost = 3.8  # scheduling hint (methods.base.Method)
    config: AdshConfig

    def build(self) -> None:
        super().build()
        self.buffers: list[AdaptiveThresholds] | None = None

    def _buffers(self, unlabeled_batch: int) -> list[AdaptiveThresholds]:
        if self.buffers is None:
            length = max(self.num_unlabeled_cases // self.config.buffer_fraction, unlabeled_batch + 1)
            self.buffers = [AdaptiveThresholds(self.num_classes, length, self.config.major_threshold) for _ in range(2)]
        return self.buffers

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n_l = batch.image_l.shape[0]
        logits_a, logits_b = self.forward_both(batch)
        sup = dice_and_ce(logits_a[:n_l], batch.label_l) + dice_and_ce(logits_b[:n_l], batch.label_l)
        buffer_a, buffer_b = self._buffers(batch.image_u.shape[0])
        mask_a = class_mask(logits_a, buffer_a.observe(logits_a[n_l:]))
        mask_b = class_mask(logits_b, buffer_b.observe(logits_b[n_l:]))
        cps = (F.cross_entropy(logits_a * mask_b, class_argmax(logits_b).detach())
               + F.cross_entropy(logits_b * mask_a, class_argmax(logits_a).detach()))
        return self.cps_step(sup, cps, step)

    def extra_state(self) -> dict[str, Any]:
        return {"buffers": None if self.buffers is None else [dict(vars(b)) for b in self.buffers]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state["buffers"] is None:
            self.buffers = None
            return
        self.buffers = []
        for saved in state["buffers"]:
            buffer = AdaptiveThresholds(self.num_classes, saved["length"], saved["major_threshold"])
            vars(buffer).update(saved)
            self.buffers.append(buffer)
