"""Two-network co-training (CPS and the DHC family, docs/algorithms.md §4.4-4.5 and 4.8-4.12).

Networks A and B with separate SGD optimisers; prediction is ``softmax((z_A + z_B) / 2)`` at test
time, i.e. :meth:`TwoNetMethod.predict` returns the mean logits (the harness applies the softmax).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Batch, Method, MethodConfig
from methods.common.class_weights import PseudoLabelWeighting
from methods.common.kernels import class_argmax
from methods.common.losses import dice_and_ce
from methods.common.ramps import sigmoid_rampup


@dataclass
class CoTrainingConfig(MethodConfig):
    """DHC scripts: lr 0.03 (``-l 3e-2``), unsupervised weight 0.1 (``-w 0.1``) with sigmoid ramp-up."""

    cps_weight: float = 0.1
    """Maximum weight of the cross pseudo-supervision term."""
    init_b: str = "xavier"
    """Initialisation of network B (A is always Kaiming); DHC itself uses ``kaiming`` for both."""


class TwoNetMethod(Method):
    """Base of the co-training methods: builds A and B, averages their logits at inference."""

    config: CoTrainingConfig
    unsupervised_weight_field = "cps_weight"

    def build(self) -> None:
        self.net_a = self.make_vnet(init="kaiming")
        self.net_b = self.make_vnet(init=self.config.init_b)
        self.optimizers = [self.make_sgd(self.net_a), self.make_sgd(self.net_b)]

    def cps_weight(self, step: int) -> float:
        """``w * rampup(t, T)`` over the whole budget (the DHC family ramps over all epochs)."""
        return self.config.cps_weight * sigmoid_rampup(step, self.max_iterations)

    def forward_both(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of A and B on the whole batch (labeled first, then unlabeled)."""
        self.net_a.train()
        self.net_b.train()
        x = torch.cat([batch.image_l, batch.image_u])
        return self.net_a(x), self.net_b(x)

    def weighted_losses(self, logits_a: torch.Tensor, logits_b: torch.Tensor, label_l: torch.Tensor,
                        weight_a: torch.Tensor | None, weight_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The DHC family's two terms with per-network class weights (docs/algorithms.md §4.4, 4.9, 4.10):
        ``sup = DC_and_CE_wA(z_A,lab, y) + DC_and_CE_wB(z_B,lab, y)`` (weights on Dice and CE) and
        ``cps = wCE_wA(z_A, argmax z_B) + wCE_wB(z_B, argmax z_A)`` over the whole batch.

        Logits are (B, C, D, H, W) with the ``label_l.shape[0]`` labeled samples first.
        """
        n_l = label_l.shape[0]
        sup = dice_and_ce(logits_a[:n_l], label_l, weight_a) + dice_and_ce(logits_b[:n_l], label_l, weight_b)
        cps = (F.cross_entropy(logits_a, class_argmax(logits_b).detach(), weight=weight_a)
               + F.cross_entropy(logits_b, class_argmax(logits_a).detach(), weight=weight_b))
        return sup, cps

    def optimise(self, loss: torch.Tensor) -> None:
        """One step of both networks' optimisers on the joint loss."""
        self.backward_step(loss)

    def cps_step(self, sup: torch.Tensor, cps: torch.Tensor, step: int) -> dict[str, float]:
        """The family's update: ``loss = sup + cps_weight(step) * cps``, one step of both optimisers; the
        common logs (methods add their own)."""
        weight = self.cps_weight(step)
        loss = sup + weight * cps
        self.optimise(loss)
        return {"loss": loss.item(), "loss_sup": sup.item(), "loss_cps": cps.item(), "cps_weight": weight}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.net_a.eval()
        self.net_b.eval()
        return (self.net_a(x) + self.net_b(x)) / 2

    def inference_modules(self) -> dict[str, nn.Module]:
        return {"net_a": self.net_a, "net_b": self.net_b}


class ClassWeightedCPS(TwoNetMethod):
    """CPS whose networks each carry count-based class weights (:class:`PseudoLabelWeighting`),
    refreshed every iteration from their own argmax before the weighted losses (CReST, SimiS).

    Subclasses set ``weight_rule`` (counts -> weights), ``blend_initial_weights`` (one moving-average
    step from ``w = C`` at initialisation instead of the labeled weights themselves) and
    ``count_whole_batch`` (count the argmax over labeled + unlabeled crops, or the unlabeled only).
    Their config needs a ``weight_momentum`` field.
    """

    weight_rule: ClassVar[Callable[[torch.Tensor], torch.Tensor]]
    blend_initial_weights: ClassVar[bool] = False
    count_whole_batch: ClassVar[bool] = False

    def build(self) -> None:
        super().build()
        rule = type(self).weight_rule
        self.weighting = [PseudoLabelWeighting(self.num_classes, rule, self.config.weight_momentum)
                          for _ in range(2)]

    def observe_data(self, labeled_labels: Sequence[np.ndarray], iterations_per_epoch: int) -> None:
        super().observe_data(labeled_labels, iterations_per_epoch)
        for weighting in self.weighting:
            weighting.init_from_labels(labeled_labels, blend_with_uniform=self.blend_initial_weights)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        counted = slice(0, None) if self.count_whole_batch else slice(batch.image_l.shape[0], None)
        logits_a, logits_b = self.forward_both(batch)
        weight_a = self.weighting[0].update(logits_a[counted])
        weight_b = self.weighting[1].update(logits_b[counted])
        sup, cps = self.weighted_losses(logits_a, logits_b, batch.label_l, weight_a, weight_b)
        return self.cps_step(sup, cps, step)

    def extra_state(self) -> dict[str, Any]:
        return {"weights": [w.state() for w in self.weighting]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for weighting, saved in zip(self.weighting, state["weights"]):
            weighting.load_state(saved)
