"""``cld``: Calibrating Label Distribution (Lin et al., MICCAI 2022), DHC adaptation (docs/algorithms.md §4.8).

CPS where (i) supervised and pseudo-label losses are weighted by the labeled set's inverse
frequency ``(max f / f_c)^(1/3)`` (fixed), and (ii) each voxel's pseudo-label loss is kept with a
probability that is high for classes the network is not yet confident about: a per-network
confidence bank (mean softmax of class c over ground-truth-c voxels, refreshed every
``confs_iter`` iterations with momentum 0.999) gives sampling rates
``s_c = ((1 - conf_c) / max_k (1 - conf_k))^0.5``; a voxel predicted c by its own network is kept
with probability ``s_c``.

Departures from the reference (docs/algorithms.md §4.8):
- ``bank_absent``: the reference sets the confidence of a class absent from an update window's
  ground truth to 0; by default it keeps its previous value (``bank_absent: zero`` is faithful).
- The class weight of a class with no voxel in the labeled set is infinite in the reference
  (``max f / 0``); here such a class counts as one voxel, a large finite weight, so that the
  weighted losses stay finite (no flag: an infinite weight turns every loss into NaN).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from methods.base import Batch
from methods.common.class_weights import class_counts, inverse_frequency_weights
from methods.common.cotraining import CoTrainingConfig, TwoNetMethod
from methods.common.kernels import class_argmax
from methods.common.losses import dice_and_ce, weighted_ce_map
from methods.registry import register


@dataclass
class CLDConfig(CoTrainingConfig):
    confs_iter: int = 8
    """Iterations accumulated before each confidence-bank update (DHC: 8; original CLD: 2)."""
    bank_momentum: float = 0.999
    sampling_power: float = 0.5
    weight_power: float = 1 / 3
    bank_absent: Literal["keep", "zero"] = "keep"
    """A class with no ground-truth voxel in an update window: ``keep`` its confidence (corrected), or
    ``zero`` it (the reference: an absent class then looks maximally uncertain and is sampled most)."""


class ConfidenceBank:
    """Per-class mean probability on ground-truth voxels, accumulated then EMA-updated."""

    def __init__(self, initial: torch.Tensor, every: int, momentum: float, absent: str = "keep") -> None:
        self.conf, self.every, self.momentum, self.absent = initial.clone(), every, momentum, absent
        self.sums = torch.zeros_like(initial)
        self.counts = torch.zeros_like(initial)
        self.seen, self.updated = 0, False

    def accumulate(self, probs_labeled: torch.Tensor, labels: torch.Tensor) -> None:
        num_classes = probs_labeled.shape[1]
        flat_probs = probs_labeled.detach().movedim(1, -1).reshape(-1, num_classes).double().cpu()
        flat_labels = labels.reshape(-1).long().cpu()
        self.sums += torch.zeros(num_classes, dtype=torch.float64).index_add_(
            0, flat_labels, flat_probs.gather(1, flat_labels[:, None])[:, 0])
        self.counts += torch.bincount(flat_labels, minlength=num_classes).double()
        self.seen += 1
        if self.seen % self.every == 0:
            present = self.counts > 0
            fallback = self.conf if self.absent == "keep" else torch.zeros_like(self.conf)
            new = torch.where(present, self.sums / self.counts.clamp(min=1), fallback)
            self.conf = new if not self.updated else self.momentum * self.conf + (1 - self.momentum) * new
            self.updated = True
            self.sums.zero_()
            self.counts.zero_()

    def sampling_rates(self, power: float) -> torch.Tensor:
        uncertainty = 1 - self.conf
        return (uncertainty / uncertainty.max().clamp(min=1e-12)) ** power


@register("cld", title="CLD", group="imbalance", version="1", config=CLDConfig)
class CLD(TwoNetMethod):
    relative_step_cost = 3.7  # scheduling hint (methods.base.Method)
    config: CLDConfig

    def build(self) -> None:
        super().build()
        initial = torch.rand(self.num_classes, dtype=torch.float64)  # B starts from A's random init
        self.banks = [ConfidenceBank(initial, self.config.confs_iter, self.config.bank_momentum,
                                     self.config.bank_absent) for _ in range(2)]
        self.class_weights = torch.ones(self.num_classes)

    def observe_data(self, labeled_labels: Sequence[np.ndarray], iterations_per_epoch: int) -> None:
        super().observe_data(labeled_labels, iterations_per_epoch)
        counts = class_counts(labeled_labels, self.num_classes)
        self.class_weights = inverse_frequency_weights(counts, self.config.weight_power).to(torch.get_default_dtype())

    def keep_mask(self, logits: torch.Tensor, bank: ConfidenceBank) -> torch.Tensor:
        """Bernoulli mask: a voxel predicted c (by this network) is kept with probability s_c."""
        rates = bank.sampling_rates(self.config.sampling_power).to(logits.device, torch.get_default_dtype())
        return (torch.rand(logits.shape[0:1] + logits.shape[2:], device=logits.device)
                < rates[class_argmax(logits.detach())]).float()

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n_l = batch.image_l.shape[0]
        weights = self.class_weights.to(batch.image_l.device)
        logits_a, logits_b = self.forward_both(batch)
        for bank, logits in zip(self.banks, (logits_a, logits_b)):
            bank.accumulate(logits[:n_l].softmax(1), batch.label_l)
        sup = dice_and_ce(logits_a[:n_l], batch.label_l, weights) + dice_and_ce(logits_b[:n_l], batch.label_l, weights)
        mask_a, mask_b = self.keep_mask(logits_a, self.banks[0]), self.keep_mask(logits_b, self.banks[1])
        cps = (weighted_ce_map(logits_a, class_argmax(logits_b).detach(), weights, mask_a)
               + weighted_ce_map(logits_b, class_argmax(logits_a).detach(), weights, mask_b))
        return {**self.cps_step(sup, cps, step), "kept_fraction": float((mask_a.mean() + mask_b.mean()) / 2)}

    def extra_state(self) -> dict[str, Any]:
        return {"banks": [vars(b).copy() for b in self.banks], "class_weights": self.class_weights}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for bank, saved in zip(self.banks, state["banks"]):
            vars(bank).update(saved)
        self.class_weights = state["class_weights"]
