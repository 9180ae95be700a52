"""``cps``: Cross Pseudo Supervision, as the DHC repository's baseline (docs/algorithms.md §4.5).

Two V-Nets (A Kaiming, B Xavier) trained with ``DC_and_CE`` on labeled crops, each supervised by the
other's hard pseudo-labels on the whole batch: ``CE(z_A, argmax z_B) + CE(z_B, argmax z_A)``, weighted
by ``0.1 * rampup(t, T)``. Test: mean logits of A and B.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from methods.base import Batch
from methods.common.cotraining import CoTrainingConfig, TwoNetMethod
from methods.common.kernels import class_argmax
from methods.common.losses import dice_and_ce
from methods.registry import register


@dataclass
class CPSConfig(CoTrainingConfig):
    """DHC-family defaults."""


@register("cps", title="CPS", group="general", version="1", config=CPSConfig)
class CPS(TwoNetMethod):
    relative_step_cost = 3.5  # scheduling hint (methods.base.Method)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        n_l = batch.image_l.shape[0]
        logits_a, logits_b = self.forward_both(batch)
        sup = dice_and_ce(logits_a[:n_l], batch.label_l) + dice_and_ce(logits_b[:n_l], batch.label_l)
        cps = F.cross_entropy(logits_a, class_argmax(logits_b).detach()) + F.cross_entropy(logits_b, class_argmax(logits_a).detach())
        return self.cps_step(sup, cps, step)
