"""MagicNet's Dice and the Gradient-Aware losses of GA (Qi et al., ECCV 2024; docs/algorithms.md §1.3b-d).

All take probabilities or logits ``(B, C, D, H, W)`` and integer labels ``(B, D, H, W)``; the Dice
terms also accept ``(B, 1, D, H, W)`` labels, the form the references' pseudo-label calls pass. Sums
run over the whole batch (batch Dice), background included.

>>> probs = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 1, 1).contiguous()
>>> labels = torch.zeros(1, 2, 1, 1, dtype=torch.long)   # class 1 absent from the batch
>>> round(float(ga_dice(probs, labels)), 4)   # (1 - 2*1.6/(1.28+2)) / 2 + mean(0.2^2) / 2
0.0322
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.common.losses import one_hot

_EPS = 1e-10


def _labels(labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W)`` labels from ``(B, D, H, W)`` or ``(B, 1, D, H, W)``."""
    if labels.dim() == probs.dim() and labels.shape[1] == 1:
        return labels[:, 0]
    return labels


def magic_dice(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MagicNet ``DiceLoss``: ``mean_c [1 - (2 sum p_c g_c + e) / (sum p_c^2 + sum g_c^2 + e)]``, every class."""
    target = one_hot(_labels(labels, probs), probs.shape[1])
    dims = (0, 2, 3, 4)
    inter = (probs * target).sum(dims)
    dice = (2 * inter + _EPS) / ((probs * probs).sum(dims) + target.sum(dims) + _EPS)
    return (1 - dice).mean()


def ga_dice(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """GADice: MagicNet's Dice term for classes present in the batch target; for a class absent from
    the whole batch, ``sum_v sg(p_v / N) p_v`` (value ``mean(p^2)``, gradient ``p_v / N``: absent
    classes are pushed down in proportion to their probability instead of receiving no gradient)."""
    target = one_hot(_labels(labels, probs), probs.shape[1])
    dims = (0, 2, 3, 4)
    present = target.sum(dims) > 0
    inter = (probs * target).sum(dims)
    dice = 1 - (2 * inter + _EPS) / ((probs * probs).sum(dims) + target.sum(dims) + _EPS)
    n_voxels = probs[:, 0].numel()  # N' = sum_v (1 - g_v) = N for an absent class
    absent = ((probs.detach() / n_voxels) * probs).sum(dims)
    return torch.where(present, dice, absent).mean()


def ga_ce(logits: torch.Tensor, labels: torch.Tensor, top_k_percent: float = 10.0, gamma: float = 0.5
          ) -> torch.Tensor:
    """GACE: per-voxel CE, keep the ``K = floor(N k / 100)`` hardest voxels of the batch, and sum over
    classes ``sum_{kept v, y_v = c} l_v / w_c`` with ``w_c = n_c^(1 - gamma) K^gamma`` (``n_c`` kept
    voxels of class c). ``gamma = 1``: mean over kept voxels; ``gamma = 0``: sum of per-class means.
    """
    loss = F.cross_entropy(logits, labels.long(), reduction="none").flatten()
    flat_labels = labels.flatten()
    k = max(1, int(loss.numel() * top_k_percent // 100))
    kept, index = loss.topk(k)
    kept_labels = flat_labels[index]
    num_classes = logits.shape[1]
    counts = torch.bincount(kept_labels, minlength=num_classes).to(loss.dtype)
    weights = (counts + _EPS) ** (1 - gamma) * float(k) ** gamma
    per_class = torch.zeros(num_classes, dtype=loss.dtype, device=loss.device).index_add(0, kept_labels, kept)
    return (per_class / (weights + _EPS)).sum()


@dataclass
class GALossConfig:
    """GA's loss settings, shared by GA and TAK (their configs inherit these fields)."""

    top_k_percent: float = 10.0
    """GACE keeps the hardest ``k`` % of the batch's voxels."""
    gamma: float = 0.5
    """GACE class normalisation: 0 = per-class mean, 1 = global mean."""


class GALosses:
    """Mixin for a MagicNet-family method: GACE as its supervised CE and GADice for every Dice term
    (GA, and TAK, which builds on GA-MagicNet). Put it before ``MagicNet`` in the bases."""

    config: GALossConfig

    def supervised_ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ga_ce(logits, labels, self.config.top_k_percent, self.config.gamma)

    def dice(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ga_dice(probs, labels)
