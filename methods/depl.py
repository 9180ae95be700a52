"""``depl``: debiased pseudo-labelling (DebiasPL, Wang et al., CVPR 2022) as adapted in the DHC
repository (``code/train_depl.py``; docs/algorithms.md §4.12).

CPS (A Kaiming, B Xavier) whose pseudo-labels are debiased by each network's running marginal: a
**per-voxel** marginal ``q`` of shape (C, *patch), initialised to ``1/C``, turns logits ``z`` into
``p~ = softmax(z - tau log q)``; the pseudo-label is ``argmax p~`` and a voxel counts only where
``max p~ >= 0.9``. After the pseudo-labels are made, ``q <- 0.99 q + 0.01 mean_batch softmax(z_unlab)``.
``L = DC_and_CE(z_A,lab, y) + DC_and_CE(z_B,lab, y) + w rampup(t, T) [wCE(z_A, y~_B; m_B) +
wCE(z_B, y~_A; m_A)]`` over the whole batch (supervised loss unweighted; masked CE averaged over all
voxels). Test: mean logits of A and B.

Departures and flags:
- ``marginal_loss`` (default False, the reference): the reference computes DebiasPL's adaptive
  marginal loss (unlabeled logits plus ``tau log q`` of the other network) on tensors it never uses
  again, so it has no effect. ``True`` applies it inside the pseudo-label CE of the unlabeled samples,
  as DebiasPL intends.
- The marginal is per voxel of the training patch (as the reference), so it is tied to the patch size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from methods.base import Batch
from methods.common.cotraining import CoTrainingConfig, TwoNetMethod
from methods.common.losses import dice_and_ce, weighted_ce_map
from methods.registry import register


@dataclass
class DePLConfig(CoTrainingConfig):
    tau: float = 1.0
    """Strength of the debiasing, ``softmax(z - tau log q)`` (reference script: 1.0)."""
    marginal_momentum: float = 0.99
    threshold: float = 0.9
    """A pseudo-label counts where its debiased probability is at least this."""
    marginal_loss: bool = False
    """Apply DebiasPL's adaptive marginal loss (the reference computes it without effect: False)."""


def debiased_pseudo_labels(logits: torch.Tensor, marginal: torch.Tensor, tau: float,
                           threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(argmax p~, [max p~ >= threshold])`` with ``p~ = softmax(z - tau log q)``; logits (B, C, *S),
    marginal (1, C, *S) or broadcastable; returns (B, *S) long labels and a (B, *S) float mask.

    >>> z = torch.tensor([2.0, 0.0]).reshape(1, 2, 1)
    >>> q = torch.tensor([0.9, 0.1]).reshape(1, 2, 1)  # class 0 over-predicted: debiasing flips the label
    >>> labels, mask = debiased_pseudo_labels(z, q, 1.0, 0.5)
    >>> labels.tolist(), mask.tolist()
    ([[1]], [[1.0]])
    """
    probs = torch.softmax(logits.detach() - tau * torch.log(marginal), dim=1)
    max_probs, labels = probs.max(dim=1)
    return labels, (max_probs >= threshold).float()


@register("depl", title="DePL", group="general", version="1", config=DePLConfig)
class DePL(TwoNetMethod):
    relative_step_cost = 3.5  # scheduling hint (methods.base.Method)
    config: DePLConfig

    def build(self) -> None:
        super().build()
        uniform = torch.full((1, self.num_classes, *self.patch), 1.0 / self.num_classes, device=self.device)
        self.marginals = [uniform.clone(), uniform.clone()]

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.config
        n_l = batch.image_l.shape[0]
        logits_a, logits_b = self.forward_both(batch)
        sup = dice_and_ce(logits_a[:n_l], batch.label_l) + dice_and_ce(logits_b[:n_l], batch.label_l)
        target_a, mask_a = debiased_pseudo_labels(logits_a, self.marginals[0], cfg.tau, cfg.threshold)
        target_b, mask_b = debiased_pseudo_labels(logits_b, self.marginals[1], cfg.tau, cfg.threshold)
        for index, logits in enumerate((logits_a, logits_b)):
            mean_probs = torch.softmax(logits[n_l:].detach(), dim=1).mean(0, keepdim=True)
            self.marginals[index] = cfg.marginal_momentum * self.marginals[index] + (1 - cfg.marginal_momentum) * mean_probs
        if cfg.marginal_loss:  # DebiasPL's adaptive marginal loss on the unlabeled logits
            shift_a = torch.cat([torch.zeros_like(logits_a[:n_l]), cfg.tau * torch.log(self.marginals[1]).expand_as(logits_a[n_l:])])
            shift_b = torch.cat([torch.zeros_like(logits_b[:n_l]), cfg.tau * torch.log(self.marginals[0]).expand_as(logits_b[n_l:])])
            logits_a, logits_b = logits_a + shift_a, logits_b + shift_b
        cps = weighted_ce_map(logits_a, target_b, voxel_mask=mask_b) + weighted_ce_map(logits_b, target_a, voxel_mask=mask_a)
        return {**self.cps_step(sup, cps, step), "pseudo_kept": float((mask_a.mean() + mask_b.mean()) / 2)}

    def extra_state(self) -> dict[str, Any]:
        return {"marginals": [m.clone() for m in self.marginals]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.marginals = [m.to(self.device).clone() for m in state["marginals"]]
