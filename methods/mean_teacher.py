"""``mean_teacher``: Tarvainen & Valpola's Mean Teacher for 3-D segmentation (docs/algorithms.md §4.7).

Student V-Net trained with ``0.5 (CE + soft Dice)`` on labeled images plus ``lambda(t) *
mean((softmax z_s - softmax z_t)^2)`` on unlabeled images; the teacher is an iteration-based EMA
(decay 0.99) of the student and sees the unlabeled images with clipped Gaussian noise.
Predictions come from the student (SSL4MIS tests the student).

Deviation from SSL4MIS, as is usual for comparability: DHC-family backbone, batch and
optimiser, and the consistency ramp runs over the whole budget (``rampup(t, T)`` with ``t`` the
iteration and ``T`` the budget) instead of ``rampup(iter // 150, 200)``, which assumes 30k iterations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.base import Batch, MethodConfig, StudentPredicts
from methods.common.ema import ema_update, make_teacher
from methods.common.losses import soft_dice_fg, softmax_mse
from methods.common.ramps import sigmoid_rampup
from methods.common.uncertainty import clipped_noise
from methods.registry import register


@dataclass
class MeanTeacherConfig(MethodConfig):
    consistency: float = 0.1
    """Maximum weight of the consistency loss."""
    ema_decay: float = 0.99
    noise_std: float = 0.1
    """Teacher input noise ``clip(N(0, std^2), -clip, clip)``."""
    noise_clip: float = 0.2


@register("mean_teacher", title="Mean Teacher", group="general", version="1",
          config=MeanTeacherConfig)
class MeanTeacher(StudentPredicts):
    relative_step_cost = 2.2  # scheduling hint (methods.base.Method)
    unsupervised_weight_field = "consistency"
    config: MeanTeacherConfig

    def build(self) -> None:
        self.student = self.make_vnet(init="kaiming")
        self.teacher = make_teacher(self.student)
        self.optimizers = [self.make_sgd(self.student)]

    def consistency_weight(self, step: int) -> float:
        return self.config.consistency * sigmoid_rampup(step, self.max_iterations)

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's input: ``x + clip(N(0, std^2), -clip, clip)``."""
        c = self.config
        return clipped_noise(x, c.noise_std, c.noise_clip)

    def step_optimizer(self, loss: torch.Tensor, ema_counter: int) -> None:
        """Backward, SGD step, then the EMA update of the teacher with ``ema_counter``."""
        self.backward_step(loss)
        ema_update(self.teacher, self.student, ema_counter, self.config.ema_decay)

    def student_forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Student logits on the unlabeled crops and the supervised loss ``0.5 (CE + soft Dice)``."""
        self.student.train()
        self.teacher.train()
        n_l = batch.image_l.shape[0]
        logits = self.student(torch.cat([batch.image_l, batch.image_u]))
        logits_l = logits[:n_l]
        sup = 0.5 * (F.cross_entropy(logits_l, batch.label_l) + soft_dice_fg(logits_l.softmax(1), batch.label_l))
        return logits[n_l:], sup

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        logits_u, sup = self.student_forward(batch)
        with torch.no_grad():
            teacher_logits = self.teacher(self.noisy(batch.image_u))
        cons = softmax_mse(logits_u, teacher_logits)
        weight = self.consistency_weight(step)
        loss = sup + weight * cons
        self.step_optimizer(loss, step)
        return {"loss": loss.item(), "loss_sup": sup.item(), "loss_cons": cons.item(), "cons_weight": weight}
