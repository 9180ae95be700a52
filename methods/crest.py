"""``crest``: CReST's re-weighting by reversed class frequency, as adapted in the DHC repository
(``code/train_crest.py``; spec 4.9).

CPS (A Kaiming, B Xavier) whose losses are class-weighted per network: ``mu_c = (n_c / max n)^(1/3)``
and the class ranked ``l`` by ``mu`` takes the ``mu`` of the class ranked ``C - 1 - l``, so the most
frequent class (background) gets the rarest class's value. Each network's weights start from the
labeled set's counts and are refreshed every iteration from the counts of the argmax of its own
unlabeled output, ``w <- 0.99 w + 0.01 w_cur``, before the losses are computed. Weights apply to
Dice and CE (supervised) and to the pseudo-label CE. Test: mean logits of A and B.

Departures from the reference: none in what is computed. CReST's original progressive distribution
alignment and its self-training generations are not part of the DHC adaptation and are not here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from methods.base import Batch
from methods.common.class_weights import PseudoLabelWeighting, reversed_frequency_weights
from methods.common.cotraining import CoTrainingConfig, TwoNetMethod
from methods.registry import register


@dataclass
class CReSTConfig(CoTrainingConfig):
    weight_momentum: float = 0.99
    """EMA momentum of each network's class weights (reference: 0.99)."""


@register("crest")
class CReST(TwoNetMethod):
    title = "CReST"
    version = "1"  # bump when what this method computes changes (part of the run key)
    group = "imbalance"
    Config = CReSTConfig
    config: CReSTConfig

    def build(self) -> None:
        super().build()
        self.weighting = [PseudoLabelWeighting(self.num_classes, reversed_frequency_weights,
                                               self.config.weight_momentum) for _ in range(2)]

    def observe_data(self, labeled_labels: Sequence[np.ndarray], iterations_per_epoch: int) -> None:
        super().observe_data(labeled_labels, iterations_per_epoch)
        for weighting in self.weighting:
            weighting.init_from_labels(labeled_labels)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n_l = batch.image_l.shape[0]
        logits_a, logits_b = self.forward_both(batch)
        weight_a = self.weighting[0].update(logits_a[n_l:])
        weight_b = self.weighting[1].update(logits_b[n_l:])
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
