"""``basak``: Basak et al., "Addressing class imbalance in semi-supervised image segmentation"
(MICCAI 2022), as adapted in the DHC repository (``code/train_acisis.py``; docs/algorithms.md §4.13).

Mean teacher (student and teacher V-Nets, both Kaiming-initialised, EMA 0.99). Over each epoch
(``iterations_per_epoch`` steps) three per-class indicators are accumulated from the student's labeled
output ``p`` and the ground truth: an entropy-like term ``E_c = sum_{y=c} p_c sum_k log p_k / n_c``,
the confidence ``C_c = mean_{y=c} p_c`` and the variance ``V_c = mean_{y=c} (max_k p_k - p_c)``.
At the end of the epoch ``R = softmax_classes([E; C; V] / iterations)`` (3 x C) is fuzzy-ranked:
Gompertz scores ``G = 1 - exp(-exp(-2 R))`` kept for the ``top_m`` smallest entries of each row,
0.632 elsewhere; ``FR = sum_rows``, ``CCF = 1 - sum_rows R' / 3`` (``R'``: R where kept, 0
elsewhere); ``CC <- 0.99 CC + 0.01 (CCF FR / max)``; sampling rates
``s_c = ((1 - CC_c) / max(1 - CC))^2.5`` (1 before the first update). A voxel of the unlabeled crops
predicted ``c`` by the student is kept with probability ``s_c`` and weighted by ``(max_k p_k)^1.5``:
``L = DC_and_CE(z_lab, y) + w rampup(t, T) mean_v(mask CE(z_unlab, argmax teacher(x_unlab)))``.
Test: the student.

Reference defects as flags (docs/algorithms.md §4.13, 1.2):
- ``accumulate``: the reference multiplies each sample's scores with a ``(B, 1, ...)`` ground-truth
  mask of **every** sample in the batch (broadcasting), so the indicators mix samples and are about
  ``B`` times the intended means while the normaliser counts voxels once; this holds for all three
  indicators. ``per_sample`` (default) is the corrected computation, ``cross_sample`` the faithful one.
- ``ema_step``: the trainer passes the epoch to the EMA update (teacher = student copy during epoch
  0); ``epoch`` reproduces it, ``iteration`` (default) is the corrected schedule.
Departures: ``top_m`` is capped at the number of classes (the reference's ``np.partition`` raises
with 12 or fewer classes); the keep/drop draw uses one uniform field instead of one per class (same
distribution).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from methods.base import Batch, MethodConfig, StudentPredicts
from methods.common.ema import ema_update
from methods.common.kernels import class_argmax
from methods.common.losses import dice_and_ce, weighted_ce_map
from methods.common.ramps import sigmoid_rampup
from methods.registry import register


@dataclass
class BasakConfig(MethodConfig):
    cps_weight: float = 0.1
    """Maximum weight of the unlabeled term (DHC scripts: ``-w 0.1 -r``)."""
    ema_decay: float = 0.99
    ema_step: Literal["iteration", "epoch"] = "iteration"
    accumulate: Literal["per_sample", "cross_sample"] = "per_sample"
    top_m: int = 12
    penalty: float = 0.632
    cc_momentum: float = 0.99
    sampling_power: float = 2.5
    confidence_power: float = 1.5


def class_indicators(logits_labeled: torch.Tensor, labels: torch.Tensor,
                     accumulate: str = "per_sample") -> torch.Tensor:
    """``[E; C; V]`` (3, C) of one batch; logits (B, C, *S), labels (B, *S). ``cross_sample`` pairs every
    sample's scores with every sample's mask, as the reference's broadcast does.

    >>> z = torch.tensor([[0.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 2)  # uniform scores, labels 0 and 1
    >>> class_indicators(z, torch.tensor([[0, 1]]))[1].tolist()  # confidence: 0.5 for both classes
    [0.5, 0.5]
    """
    probs = torch.softmax(logits_labeled.detach().float(), dim=1)
    num_classes = probs.shape[1]
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).movedim(-1, 1).float()  # (B, C, *S)
    log_sum = torch.log(probs + 1e-12).sum(1, keepdim=True)
    terms = torch.stack([probs * log_sum, probs, probs.amax(1, keepdim=True) - probs])  # (3, B, C, *S)
    if accumulate == "cross_sample":
        totals = (terms.sum(1) * onehot.sum(0)).flatten(2).sum(-1)  # sum_b f_b(v) x sum_b' [y_b'(v) = c]
    else:
        totals = (terms * onehot).flatten(3).sum(-1).sum(1)
    counts = onehot.flatten(2).sum(-1).sum(0) + 1e-12
    return totals / counts


def fuzzy_rank_sampling(indicators: torch.Tensor, previous_cc: torch.Tensor, top_m: int, penalty: float,
                        momentum: float, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CC, s)`` after one update from epoch-mean indicators (3, C): Gompertz fuzzy rank of their
    per-row softmax, ``CC <- m CC + (1 - m) CCF FR / max`` and ``s = ((1 - CC) / max(1 - CC))^power``."""
    ranks = torch.softmax(indicators.double(), dim=1)
    gompertz = 1 - torch.exp(-torch.exp(-2.0 * ranks))
    top = min(top_m, ranks.shape[1])
    cutoff = gompertz.sort(dim=1).values[:, top - 1:top]
    kept = torch.where(gompertz <= cutoff, gompertz, torch.full_like(gompertz, penalty))
    fr = kept.sum(0)
    ccf = 1 - torch.where(kept == penalty, torch.zeros_like(ranks), ranks).sum(0) / ranks.shape[0]
    current = ccf * fr
    cc = momentum * previous_cc + (1 - momentum) * current / current.max()
    rates = 1 - cc
    return cc, (rates / (rates.max() + 1e-12)) ** power


@register("basak", title="Basak et al.", group="imbalance", version="1", config=BasakConfig)
class Basak(StudentPredicts):
    relative_step_cost = 2.1  # scheduling hint (methods.base.Method)
    config: BasakConfig
    unsupervised_weight_field = "cps_weight"

    def build(self) -> None:
        self.student = self.make_vnet(init="kaiming")
        self.teacher = self.make_vnet(init="kaiming")  # initialised on its own, as the reference
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.optimizers = [self.make_sgd(self.student)]
        self.sums = torch.zeros(3, self.num_classes, dtype=torch.float64)
        self.seen = 0
        self.cc = torch.zeros(self.num_classes, dtype=torch.float64)
        self.rates = torch.ones(self.num_classes, dtype=torch.float64)

    def sampling_mask(self, logits_unlabeled: torch.Tensor) -> torch.Tensor:
        """Keep each voxel predicted ``c`` with probability ``s_c``, weighted by ``max_k p_k ^ 1.5``."""
        probs = torch.softmax(logits_unlabeled.detach(), dim=1)
        confidence, predicted = probs.max(1)
        rates = self.rates.to(probs)
        keep = (torch.rand_like(confidence) > 1 - rates[predicted]).float()
        return keep * confidence ** self.config.confidence_power

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        c = self.config
        self.student.train()
        self.teacher.train()
        n_l = batch.image_l.shape[0]
        logits = self.student(torch.cat([batch.image_l, batch.image_u]))
        with torch.no_grad():
            pseudo = class_argmax(self.teacher(batch.image_u))
        sup = dice_and_ce(logits[:n_l], batch.label_l)
        self.sums += class_indicators(logits[:n_l], batch.label_l, c.accumulate).double().cpu()
        self.seen += 1
        if self.seen == max(self.iterations_per_epoch, 1):
            self.cc, self.rates = fuzzy_rank_sampling(self.sums / self.seen, self.cc, c.top_m, c.penalty,
                                                      c.cc_momentum, c.sampling_power)
            self.sums.zero_()
            self.seen = 0
        mask = self.sampling_mask(logits[n_l:])
        unsup = weighted_ce_map(logits[n_l:], pseudo, voxel_mask=mask)
        weight = c.cps_weight * sigmoid_rampup(step, self.max_iterations)
        loss = sup + weight * unsup
        self.backward_step(loss)
        ema_update(self.teacher, self.student,
                   step if c.ema_step == "iteration" else step // max(self.iterations_per_epoch, 1), c.ema_decay)
        return {"loss": loss.item(), "loss_sup": sup.item(), "loss_unsup": unsup.item(), "unsup_weight": weight,
                "kept_fraction": float((mask > 0).float().mean())}

    def extra_state(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "seen": self.seen, "cc": self.cc.clone(), "rates": self.rates.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sums, self.seen = state["sums"].clone(), state["seen"]
        self.cc, self.rates = state["cc"].clone(), state["rates"].clone()
