"""``simis``: SimiS's class weights as adapted in the DHC repository (``code/train_simis.py``;
spec 4.10).

CPS (A Kaiming, B Xavier) whose losses are class-weighted per network with
``w_c = C (max_k P_k - P_c)``, ``P_c`` the class's share of the voxels (the most frequent class gets
0). Weights start one moving-average step away from ``C`` toward the labeled set's weights,
``0.99 C + 0.01 w_labeled``, and are refreshed every iteration from the counts of the argmax of the
network's output on the **whole batch** (labeled and unlabeled), ``w <- 0.99 w + 0.01 w_cur``.
Weights apply to Dice and CE (supervised) and to the pseudo-label CE. Test: mean logits of A and B.

Departures from the reference: none in what is computed (the class's constructor default momentum
0.95 is overridden to 0.99 by the reference script, as here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from methods.base import Batch
from methods.common.class_weights import PseudoLabelWeighting, proportion_gap_weights
from methods.common.cotraining import CoTrainingConfig, TwoNetMethod
from methods.registry import register


@dataclass
class SimiSConfig(CoTrainingConfig):
    weight_momentum: float = 0.99
    """EMA momentum of each network's class weights (reference script: 0.99)."""


@register("simis")
class SimiS(TwoNetMethod):
    title = "SimiS"
    version = "1"  # bump when what this method computes changes (part of the run key)
    group = "imbalance"
    Config = SimiSConfig
    config: SimiSConfig

    def build(self) -> None:
        super().build()
        self.weighting = [PseudoLabelWeighting(self.num_classes, proportion_gap_weights,
                                               self.config.weight_momentum) for _ in range(2)]

    def observe_data(self, labeled_labels: Sequence[np.ndarray], iterations_per_epoch: int) -> None:
        super().observe_data(labeled_labels, iterations_per_epoch)
        for weighting in self.weighting:
            weighting.init_from_labels(labeled_labels, blend_with_uniform=True)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        logits_a, logits_b = self.forward_both(batch)
        weight_a = self.weighting[0].update(logits_a)  # whole batch, as the reference
        weight_b = self.weighting[1].update(logits_b)
        sup, cps = self.weighted_losses(logits_a, logits_b, batch.label_l, weight_a, weight_b)
        weight = self.cps_weight(step)
        loss = sup + weight * cps
        self.optimise(loss)
        return {"loss": loss.item(), "loss_sup": sup.item(), "loss_cps": cps.item(), "cps_weight": weight}

    def extra_state(self) -> dict[str, Any]:
        return {"weights": [w.state() for w in self.weighting]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for weighting, saved in zip(self.weighting, state["weights"]):
            weighting.load_state(saved)
