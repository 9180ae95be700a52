"""Segmentation losses shared by the methods (docs/algorithms.md §1.3).

All functions take logits ``(B, C, D, H, W)`` and integer labels ``(B, D, H, W)`` unless stated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, D, H, W)`` int labels -> ``(B, C, D, H, W)`` float one-hot."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).to(torch.get_default_dtype())


def batch_dice_fg(probs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                  smooth: float = 1.0) -> torch.Tensor:
    """DHC/nnU-Net batch Dice over foreground classes, returned as ``-mean_c w_c dc_c`` (docs/algorithms.md §1.3a).

    ``dc_c = (2 TP_c + s) / (sum p_c + sum g_c + s + 1e-8)``, sums over batch and space; background
    (class 0) excluded; ``weights`` has length C (``weights[1:]`` are used).
    """
    num_classes = probs.shape[1]
    target = one_hot(labels, num_classes)
    dims = (0, 2, 3, 4)
    tp = (probs * target).sum(dims)
    dc = (2 * tp + smooth) / (probs.sum(dims) + target.sum(dims) + smooth + 1e-8)
    dc = dc[1:]
    if weights is not None:
        dc = dc * weights[1:]
    return -dc.mean()


def dice_and_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """DHC's ``DC_and_CE``: weighted cross-entropy (mean over weights) + :func:`batch_dice_fg`."""
    ce = F.cross_entropy(logits, labels.long(), weight=weights)
    return ce + batch_dice_fg(logits.softmax(1), labels, weights)


def soft_dice_fg(probs: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-8) -> torch.Tensor:
    """UA-MT's soft Dice loss ``1 - mean_{c>0} (2 I_c + s)/(sum p_c + sum g_c + s)`` (batch sums)."""
    target = one_hot(labels, probs.shape[1])
    dims = (0, 2, 3, 4)
    inter = (probs * target).sum(dims)[1:]
    denom = (probs.sum(dims) + target.sum(dims))[1:]
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over voxels and classes of ``(softmax(z_s) - softmax(z_t))^2``; the teacher is detached."""
    return F.mse_loss(student_logits.softmax(1), teacher_logits.detach().softmax(1))


def weighted_ce_map(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                    voxel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """DHC/CLD ``WeightedCrossEntropyLoss`` (docs/algorithms.md §1.3e): per-voxel CE x class weight x mask, averaged
    over **all** voxels (masked-out voxels count in the denominator)."""
    loss = F.cross_entropy(logits, labels.long(), weight=weights, reduction="none")
    if voxel_mask is not None:
        loss = loss * voxel_mask
    return loss.mean()
