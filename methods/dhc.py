"""``dhc``: Dual-debiased Heterogeneous Co-training (Wang & Li, MICCAI 2023; docs/algorithms.md §4.4).

CPS with two differently debiased networks: A's losses use difficulty-aware class weights (DiffDW,
from A's labeled Dice history), B's use distribution-aware weights (DistDW, log inverse frequency
of B's pseudo-labels, initialised from the labeled set). Both supervised losses are weighted
``DC_and_CE``; the cross pseudo-supervision is weighted CE over the whole batch. Both networks are
Kaiming-initialised, as in the reference. Test: mean logits of A and B.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from methods.base import Batch
from methods.common.class_weights import DifficultyWeighting, DistributionWeighting
from methods.common.cotraining import CoTrainingConfig, TwoNetMethod
from methods.registry import register


@dataclass
class DHCConfig(CoTrainingConfig):
    init_b: str = "kaiming"
    accumulate_iters: int = 50
    """K of DiffDW's moving averages (beta = (K - 1) / K)."""
    dist_momentum: float = 0.99
    """EMA momentum of DistDW's weights."""


@register("dhc", title="DHC", group="imbalance", version="1", config=DHCConfig)
class DHC(TwoNetMethod):
    relative_step_cost = 3.7  # scheduling hint (methods.base.Method)
    config: DHCConfig

    def build(self) -> None:
        super().build()
        self.diff_dw = DifficultyWeighting(self.num_classes, self.config.accumulate_iters)
        self.dist_dw = DistributionWeighting(self.num_classes, self.config.dist_momentum)

    def observe_data(self, labeled_labels: Sequence[np.ndarray], iterations_per_epoch: int) -> None:
        super().observe_data(labeled_labels, iterations_per_epoch)
        self.dist_dw.init_from_labels(labeled_labels)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n_l = batch.image_l.shape[0]
        logits_a, logits_b = self.forward_both(batch)
        weight_a = self.diff_dw.update(logits_a[:n_l], batch.label_l)
        weight_b = self.dist_dw.update(logits_b[n_l:])
        sup, cps = self.weighted_losses(logits_a, logits_b, batch.label_l, weight_a, weight_b)
        return self.cps_step(sup, cps, step)

    def extra_state(self) -> dict[str, Any]:
        return {"diff_dw": vars(self.diff_dw).copy(), "dist_dw": vars(self.dist_dw).copy()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        vars(self.diff_dw).update(state["diff_dw"])
        vars(self.dist_dw).update(state["dist_dw"])
