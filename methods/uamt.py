"""``uamt``: Uncertainty-Aware Mean Teacher (Yu et al., MICCAI 2019), DHC's baseline (docs/algorithms.md §4.6).

Mean Teacher whose consistency term only counts voxels where the teacher is certain: T = 8
stochastic teacher passes (dropout active, fresh input noise) give the entropy U of their mean
softmax; voxels with ``U < ln2 (0.75 + 0.25 rampup)`` enter
``sum_v m_v sum_c (p_s - p_t)^2 / (2 sum_v m_v + 1e-16)``. Supervised: ``0.5 (CE + soft Dice)``.

Reference defect as a flag (docs/algorithms.md §1.2): DHC's trainer passes the **epoch** to the EMA update, so the
teacher copies the student for the first epoch. ``ema_step="epoch"`` reproduces it;
``"iteration"`` (default) is the corrected schedule. The ramps run over the whole budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from methods.base import Batch
from methods.common.ramps import sigmoid_rampup
from methods.common.uncertainty import mc_entropy
from methods.mean_teacher import MeanTeacher, MeanTeacherConfig
from methods.registry import register


@dataclass
class UAMTConfig(MeanTeacherConfig):
    ema_step: Literal["iteration", "epoch"] = "iteration"
    """``epoch`` reproduces the DHC trainer's defect (teacher = student copy during epoch 0)."""
    uncertainty_passes: int = 8


@register("uamt", title="UA-MT", group="general", version="1", config=UAMTConfig)
class UAMT(MeanTeacher):
    relative_step_cost = 4.5  # scheduling hint (methods.base.Method)
    config: UAMTConfig

    def uncertainty(self, image_u: torch.Tensor) -> torch.Tensor:
        """Entropy ``(B_u, D, H, W)`` of the mean softmax over T noisy, dropout-active teacher passes."""
        c = self.config
        return mc_entropy(self.teacher, image_u, self.num_classes, c.uncertainty_passes, c.noise_std, c.noise_clip)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        c = self.config
        logits_u, sup = self.student_forward(batch)
        with torch.no_grad():
            teacher_probs = self.teacher(self.noisy(batch.image_u)).softmax(1)
        ramp = sigmoid_rampup(step, self.max_iterations)
        threshold = (0.75 + 0.25 * ramp) * math.log(2)
        mask = (self.uncertainty(batch.image_u) < threshold).float()
        squared = ((logits_u.softmax(1) - teacher_probs) ** 2).sum(1)
        cons = (mask * squared).sum() / (2 * mask.sum() + 1e-16)
        weight = c.consistency * ramp
        loss = sup + weight * cons
        self.step_optimizer(loss, step if c.ema_step == "iteration" else step // max(self.iterations_per_epoch, 1))
        return {"loss": loss.item(), "loss_sup": sup.item(), "loss_cons": cons.item(), "cons_weight": weight,
                "certain_fraction": mask.mean().item()}
