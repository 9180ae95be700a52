"""``cobionet``: Co-BioNet (port) -- two segmentation networks and two critics (after Peiris et al.,
"Uncertainty-guided dual-views for semi-supervised volumetric medical image segmentation", Nature
Machine Intelligence 2023; docs/algorithms.md §4.16).

**This is the suite's multi-class port, not the published method.** The public code is binary
(one sigmoid channel). The port keeps its structure with softmax outputs over C classes:

- networks A and B (V-Net nf 16 BatchNorm) see the labeled and unlabeled crops; critics ``K_A``,
  ``K_B`` (1x1x1 convolutions C -> 16 -> 32 -> 64 -> 1, BatchNorm + LeakyReLU(0.2), as the reference's
  ``Discriminator``) score every voxel of a probability map as real (a ground-truth one-hot) or fake;
- network A's loss: ``L_sup + w(t) (L_dis + L_mask + mu L_adv)`` with ``L_sup = CE + soft Dice``
  (labeled); the discrepancy ``L_dis = mean_v -sum_c p_B log p_A`` (unlabeled, B detached); the
  critic-masked cross loss ``L_mask = mean_v [sigmoid(K_B(p_B)) > t_m] (-sum_c p_B log p_A)`` (B's own
  critic decides which of B's voxels A learns from; masked-out voxels count in the mean);
  ``L_adv = BCE(K_A(p_A), real)`` over the whole batch; B's loss mirrors it;
- critic ``K_A``: ``(BCE(K_A(onehot y), real) + BCE(K_A(p_A), fake)) / 2`` (labeled ground truth vs
  all of A's predictions), AdamW at ``critic_lr``;
- ``w(t) = consistency rampup(t, T)``; test: mean logits of A and B.

Reference defects, as flags (corrected by default):
- ``critic_updates="frozen"``: the reference back-propagates a detached copy of the critic loss, so
  the critics never learn (they keep their initial weights; only their BatchNorm statistics move).
- ``discrepancy_gradient=False``: the reference's discrepancy loss returns ``.item()``, a constant
  that sends no gradient (and only its last channel's value survives a loop).

What differs from the paper besides the port: poly learning-rate decay over the suite's budget
(the reference: cosine annealing over 15 000 iterations; the critics' rate follows the same decay,
scaled to ``critic_lr``); the ramp runs over the budget (reference ``rampup(iter // 150, 40)``); the
masked loss averages a per-voxel mask (the reference multiplies a mean BCE by the mask, i.e. by
the masked fraction); one forward per network on the whole batch (the reference runs the labeled,
unlabeled and whole batch separately); as a port it trains with the suite's DHC-family optimiser
(SGD Nesterov 0.9, lr 0.03, weight decay 3e-5), as Mean Teacher and the DeSCO port do, where the
reference uses SGD momentum 0.9, lr 0.01, weight decay 1e-4. Width: the reference's V-Net nf 16
(BatchNorm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Batch, MethodConfig
from methods.common.cotraining import TwoNetMethod
from methods.common.losses import one_hot, soft_dice_fg
from methods.common.ramps import sigmoid_rampup
from methods.registry import register


class Critic(nn.Module):
    """Per-voxel critic: four 1x1x1 convolutions (no bias) ``C -> 16 -> 32 -> 64 -> 1``, each followed by
    BatchNorm and LeakyReLU(0.2), as the reference's ``Discriminator``; returns logits ``(B, 1, D, H, W)``
    for probability maps ``(B, C, D, H, W)`` (the reference applies a sigmoid).

    A 1x1x1 convolution is a linear map of every voxel's channels and BatchNorm3d normalises each
    channel over batch and space, so the critic runs as Linear + BatchNorm1d on the voxels as rows:
    the same function, 1.7x faster on the CPU than the convolution path.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, 16, 32, 64], [16, 32, 64, 1]):
            layers += [nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out), nn.LeakyReLU(0.2, inplace=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = probs.shape
        out = self.layers(probs.movedim(1, -1).reshape(-1, channels))
        return out.reshape(batch, *spatial, 1).movedim(-1, 1)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``-sum_c q_c log softmax(z)_c`` ``(B, D, H, W)``; ``q`` is treated as a constant."""
    return -(target_probs.detach() * F.log_softmax(logits, dim=1)).sum(1)


@dataclass
class CoBioNetConfig(MethodConfig):
    base_filters: int = 16
    consistency: float = 1.0
    """Maximum weight ``w`` of the unsupervised terms (ramped up over the budget)."""
    supervised_weight: float = 1.0
    """The reference's ``lamda`` on ``CE + Dice``."""
    adversarial_weight: float = 0.01
    """The reference's ``mu`` on the generator's adversarial loss."""
    mask_threshold: float = 0.2
    """``t_m``: a voxel enters the cross loss when the other network's critic scores it above this."""
    critic_lr: float = 1e-4
    critic_updates: Literal["trained", "frozen"] = "trained"
    """``frozen`` reproduces the reference: the critics never receive their loss's gradient."""
    discrepancy_gradient: bool = True
    """False reproduces the reference: the discrepancy loss is a constant (``.item()``)."""


@register("cobionet", title="Co-BioNet (port)", group="general", version="1", config=CoBioNetConfig)
class CoBioNet(TwoNetMethod):
    relative_step_cost = 8.6  # scheduling hint (methods.base.Method)
    unsupervised_weight_field = "consistency"
    config: CoBioNetConfig  # type: ignore[assignment]

    def build(self) -> None:
        c = self.config
        self.net_a, self.net_b = self.make_vnet(), self.make_vnet()
        self.critic_a, self.critic_b = Critic(self.num_classes), Critic(self.num_classes)
        critic_opts = [torch.optim.AdamW(critic.parameters(), lr=c.critic_lr) for critic in (self.critic_a, self.critic_b)]
        for opt in critic_opts:  # the harness sets lr = poly(t) * lr_scale for every group
            for group in opt.param_groups:
                group["lr_scale"] = c.critic_lr / c.lr
        self.optimizers = [self.make_sgd(self.net_a), self.make_sgd(self.net_b), *critic_opts]

    def network_loss(self, logits: torch.Tensor, other_logits: torch.Tensor, own_critic: nn.Module,
                     other_critic: nn.Module, label_l: torch.Tensor, weight: float) -> tuple[torch.Tensor, dict[str, float]]:
        """One network's loss (logits of the whole batch, labeled first) and its parts."""
        c, n_l = self.config, label_l.shape[0]
        probs, other_probs_u = logits.softmax(1), other_logits[n_l:].detach().softmax(1)
        sup = c.supervised_weight * (F.cross_entropy(logits[:n_l], label_l) + soft_dice_fg(probs[:n_l], label_l))
        cross = soft_cross_entropy(logits[n_l:], other_probs_u)
        discrepancy = cross.mean() if c.discrepancy_gradient else cross.mean().detach()
        with torch.no_grad():
            mask = (torch.sigmoid(other_critic(other_probs_u)[:, 0]) > c.mask_threshold).float()
        masked = (mask * cross).mean()
        critic_out = own_critic(probs)
        adversarial = F.binary_cross_entropy_with_logits(critic_out, torch.ones_like(critic_out))
        loss = sup + weight * (discrepancy + masked + c.adversarial_weight * adversarial)
        return loss, {"sup": sup.item(), "dis": discrepancy.item(), "mask": masked.item(), "adv": adversarial.item(),
                      "mask_fraction": mask.mean().item()}

    def critic_loss(self, critic: nn.Module, probs: torch.Tensor, label_l: torch.Tensor) -> torch.Tensor:
        """``(BCE(K(onehot y), 1) + BCE(K(p), 0)) / 2`` with the predictions ``p`` detached."""
        real, fake = critic(one_hot(label_l, self.num_classes)), critic(probs.detach())
        return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        for module in self.modules().values():
            module.train()
        logits_a, logits_b = self.forward_both(batch)
        weight = self.config.consistency * sigmoid_rampup(step, self.max_iterations)
        loss_a, parts_a = self.network_loss(logits_a, logits_b, self.critic_a, self.critic_b, batch.label_l, weight)
        loss_b, parts_b = self.network_loss(logits_b, logits_a, self.critic_b, self.critic_a, batch.label_l, weight)
        self.backward_step(loss_a + loss_b, self.optimizers[:2])
        critic_loss = (self.critic_loss(self.critic_a, logits_a.softmax(1), batch.label_l)
                       + self.critic_loss(self.critic_b, logits_b.softmax(1), batch.label_l))
        if self.config.critic_updates == "trained":
            self.backward_step(critic_loss, self.optimizers[2:])
        logs = {"loss": (loss_a + loss_b).item(), "loss_critic": critic_loss.item(), "weight": weight}
        logs.update({f"{k}_a": v for k, v in parts_a.items()})
        logs.update({f"{k}_b": v for k, v in parts_b.items()})
        return logs

    def segmentation_networks(self) -> dict[str, nn.Module]:
        return {"net_a": self.net_a, "net_b": self.net_b}
