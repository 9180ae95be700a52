"""Exponential-moving-average teacher (docs/algorithms.md §1.2)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A detached deep copy of ``student`` whose parameters receive no gradient."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, decay: float = 0.99) -> float:
    """``theta_t <- a theta_t + (1 - a) theta_s`` with ``a = min(1 - 1/(step + 1), decay)``.

    ``step`` is the iteration counter (the reference MagicNet/TAK/SSL4MIS behaviour); passing an
    epoch counter reproduces the DHC UA-MT/Basak defect. Only parameters are averaged, as in the
    references; normalisation buffers of the teacher come from its own forward passes.

    Returns:
        the ``a`` used.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    return alpha
