"""Class-weighting schemes of the class-imbalance methods (DHC's DistDW and DiffDW, CLD's weights).

All weight vectors have length C (background included) and live on the logits' device.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from methods.common.kernels import class_argmax


def class_counts(labels: torch.Tensor | Sequence[np.ndarray], num_classes: int) -> torch.Tensor:
    """Voxel count per class (float64) of an int tensor or a list of label volumes."""
    if isinstance(labels, torch.Tensor):
        return torch.bincount(labels.reshape(-1).long(), minlength=num_classes).double()
    total = np.zeros(num_classes)
    for volume in labels:
        total += np.bincount(np.asarray(volume).reshape(-1), minlength=num_classes)[:num_classes]
    return torch.from_numpy(total)


def distribution_weights(counts: torch.Tensor) -> torch.Tensor:
    """DHC DistDW: ``w_c = C log r_c / max_k log r_k`` with ``r_c = (max n + 1e-8) / (n_c + 1e-8)``.

    The most frequent class gets 0; a class with no voxel gets the maximum ``C``.

    >>> distribution_weights(torch.tensor([1000.0, 100.0, 10.0])).tolist()
    [0.0, 1.5, 3.0]
    """
    ratio = (counts.max() + 1e-8) / (counts + 1e-8)
    log_ratio = ratio.log()
    return len(counts) * log_ratio / log_ratio.max()


class DistributionWeighting:
    """DHC's distribution-aware weights for model B: initialised from the labeled set's counts,
    then every iteration ``w <- 0.99 w + 0.01 w(counts of argmax of B's unlabeled output)``."""

    def __init__(self, num_classes: int, momentum: float = 0.99) -> None:
        self.num_classes, self.momentum = num_classes, momentum
        self.weights = torch.full((num_classes,), float(num_classes), dtype=torch.float64)

    def init_from_labels(self, labels: Sequence[np.ndarray]) -> None:
        self.weights = distribution_weights(class_counts(labels, self.num_classes))

    def update(self, logits_unlabeled: torch.Tensor) -> torch.Tensor:
        counts = class_counts(class_argmax(logits_unlabeled.detach()).cpu(), self.num_classes)
        self.weights = self.momentum * self.weights + (1 - self.momentum) * distribution_weights(counts)
        return self.weights.to(logits_unlabeled.device, torch.get_default_dtype())


def hard_dice_per_class(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Hard batch Dice per class incl. background; a class absent from both sides gives 0.5."""
    num_classes = logits.shape[1]
    pred = class_argmax(logits).reshape(-1)
    gt = labels.reshape(-1).long()
    tp = torch.bincount(gt[pred == gt], minlength=num_classes).double()
    size_p = torch.bincount(pred, minlength=num_classes).double()
    size_g = torch.bincount(gt, minlength=num_classes).double()
    return ((2 * tp + eps) / (size_p + size_g + 2 * eps)).cpu()


class DifficultyWeighting:
    """DHC's difficulty-aware weights for model A (docs/algorithms.md §4.4), updated every iteration from A's
    labeled output: classes whose Dice drops ("unlearning") or stays low get more weight.

    ``normalise_max``: DHC scales the scores so that the largest weight is ``C``; A&D (docs/algorithms.md §4.15)
    multiplies them by ``C`` without that normalisation.
    """

    def __init__(self, num_classes: int, accumulate_iters: int = 50, normalise_max: bool = True) -> None:
        self.num_classes, self.normalise_max = num_classes, normalise_max
        self.beta = (accumulate_iters - 1) / accumulate_iters
        self.prev_dice = torch.full((num_classes,), 1e-8, dtype=torch.float64)
        self.learned = torch.zeros(num_classes, dtype=torch.float64)
        self.unlearned = torch.zeros(num_classes, dtype=torch.float64)
        self.dice_deficit = torch.ones(num_classes, dtype=torch.float64)
        self.weights = torch.full((num_classes,), float(num_classes), dtype=torch.float64)

    def update(self, logits_labeled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dice = hard_dice_per_class(logits_labeled.detach(), labels)
        delta = dice - self.prev_dice
        log_ratio = torch.log(dice / self.prev_dice)
        learn = torch.where(delta > 0, delta * log_ratio, torch.zeros_like(delta))
        unlearn = torch.where(delta <= 0, delta * log_ratio, torch.zeros_like(delta))
        b = self.beta
        self.learned = b * self.learned + (1 - b) * learn
        self.unlearned = b * self.unlearned + (1 - b) * unlearn
        difficulty = ((self.unlearned + 1e-8) / (self.learned + 1e-8)) ** 0.2
        self.dice_deficit = b * self.dice_deficit + (1 - b) * (1 - dice)
        score = difficulty * self.dice_deficit
        self.weights = self.num_classes * (score / score.max() if self.normalise_max else score)
        self.prev_dice = dice
        return self.weights.to(logits_labeled.device, torch.get_default_dtype())


def inverse_frequency_weights(counts: torch.Tensor, power: float = 1 / 3) -> torch.Tensor:
    """CLD: ``w_c = (max_k n_k / n_c) ** power``; a class with no voxel is counted as one voxel.

    >>> inverse_frequency_weights(torch.tensor([1000.0, 125.0, 1.0])).tolist()
    [1.0, 2.0, 10.0]
    """
    counts = counts.clamp(min=1.0)
    return (counts.max() / counts) ** power


def reversed_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """CReST (DHC adaptation, docs/algorithms.md §4.9): ``mu_c = ((n_c + 1e-8) / (max n + 1e-8)) ** (1/3)``; with
    the classes sorted by ``mu`` descending (ties keep class order), the class ranked ``l`` gets the
    ``mu`` of the class ranked ``C - 1 - l``: the most frequent class gets the rarest class's ``mu``.

    >>> [round(w, 4) for w in reversed_frequency_weights(torch.tensor([1000.0, 125.0, 1.0])).tolist()]
    [0.1, 0.5, 1.0]
    """
    mu = ((counts.double() + 1e-8) / (counts.double().max() + 1e-8)) ** (1 / 3)
    order = sorted(range(len(mu)), key=lambda c: -float(mu[c]))  # stable, like the reference's sort
    weights = torch.zeros_like(mu)
    for rank, cls in enumerate(order):
        weights[cls] = mu[order[len(mu) - 1 - rank]]
    return weights


def proportion_gap_weights(counts: torch.Tensor) -> torch.Tensor:
    """SimiS (DHC adaptation, docs/algorithms.md §4.10): ``w_c = C (max_k P_k - P_c)`` with
    ``P_c = (n_c + 1e-8) / (sum n + 1e-8)``; the most frequent class gets 0.

    >>> [round(w, 4) for w in proportion_gap_weights(torch.tensor([6.0, 3.0, 1.0])).tolist()]
    [0.0, 0.9, 1.5]
    """
    proportions = (counts.double() + 1e-8) / (counts.double().sum() + 1e-8)
    return len(counts) * (proportions.max() - proportions)


class PseudoLabelWeighting:
    """Class weights from a count-based rule, smoothed every iteration with the counts of a network's
    own argmax: ``w <- m w + (1 - m) rule(counts(argmax logits))`` (CReST, SimiS)."""

    def __init__(self, num_classes: int, rule: Callable[[torch.Tensor], torch.Tensor],
                 momentum: float = 0.99) -> None:
        self.num_classes, self.rule, self.momentum = num_classes, rule, momentum
        self.weights = torch.full((num_classes,), float(num_classes), dtype=torch.float64)

    def init_from_labels(self, labels: Sequence[np.ndarray], blend_with_uniform: bool = False) -> None:
        """Set the weights from the labeled set's counts; ``blend_with_uniform`` applies one moving-average
        step from ``w = C`` instead (SimiS's initialisation)."""
        labeled = self.rule(class_counts(labels, self.num_classes))
        self.weights = self.momentum * self.weights + (1 - self.momentum) * labeled if blend_with_uniform else labeled

    def update(self, logits: torch.Tensor) -> torch.Tensor:
        counts = class_counts(class_argmax(logits.detach()).cpu(), self.num_classes)
        self.weights = self.momentum * self.weights + (1 - self.momentum) * self.rule(counts)
        return self.weights.to(logits.device, torch.get_default_dtype())

    def state(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.weights = state["weights"].clone()
