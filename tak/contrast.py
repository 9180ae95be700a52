"""TAK's cross-modal contrastive alignment (spec 4.1 step 9): voxel sampling and the supervised
contrastive loss over voxel and text anchors.

>>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> # anchors 0, 1: log(1 + e^-1) each; anchor 2 has no positive (0): mean = 2/3 * 0.3133
>>> round(float(supervised_contrastive(a, torch.tensor([0, 0, 1]), 1.0)), 4)
0.2088
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample_labels(labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour downsampling of ``(B, D, H, W)`` labels (``-1`` = ignore) to ``size``."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def sample_voxels(embeddings: torch.Tensor, labels: torch.Tensor, per_class: int, draw_all: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every view and every class present in it, up to ``per_class`` voxels uniformly at random.

    As the reference, a class with at most ``per_class`` voxels contributes all of them, in order,
    without drawing random numbers; ``draw_all`` permutes every class (the suite's version 1, which
    consumed the random stream for every class).

    Args:
        embeddings: ``(V, K, D, H, W)`` voxel embeddings of ``V`` views.
        labels: ``(V, D, H, W)`` class ids at the same grid; ``-1`` voxels are never sampled.
    Returns:
        ``(N, K)`` sampled embeddings and their ``(N,)`` labels.
    """
    feats, classes = [], []
    flat = embeddings.flatten(2)  # (V, K, voxels)
    for view in range(labels.shape[0]):
        lab = labels[view].flatten()
        for cls in lab[lab >= 0].unique():
            idx = (lab == cls).nonzero().squeeze(1)
            if draw_all or idx.numel() > per_class:
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:per_class]]
            feats.append(flat[view][:, idx].T)
            classes.append(torch.full((idx.numel(),), int(cls), dtype=torch.long, device=labels.device))
    if not feats:
        return embeddings.new_zeros((0, embeddings.shape[1])), labels.new_zeros((0,))
    return torch.cat(feats), torch.cat(classes)


def supervised_contrastive(anchors: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss over L2-normalised ``anchors`` ``(N, K)`` with ``labels`` ``(N,)``.

    ``l_i = -1/(|P(i)| + 1e-5) sum_{j in P(i)} [s_ij - log(exp s_ij + sum_{k in Neg(i)} exp s_ik)]``
    with ``s = a a^T / tau`` shifted by its row maximum, ``P(i)`` the other anchors of i's class and
    ``Neg(i)`` those of other classes; returns ``mean_i l_i``.
    """
    a = F.normalize(anchors, dim=1)
    sim = a @ a.T / temperature
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()
    same = labels[:, None] == labels[None]
    exp = sim.exp()
    negatives_sum = exp.masked_fill(same, 0.0).sum(dim=1)
    positives = same.clone().fill_diagonal_(False)
    rows, cols = positives.nonzero(as_tuple=True)  # the log is needed on positive pairs only
    terms = sim[rows, cols] - torch.log(exp[rows, cols] + negatives_sum[rows])
    totals = sim.new_zeros(len(labels)).index_add(0, rows, terms)
    per_anchor = -totals / (positives.sum(1) + 1e-5)
    return per_anchor.mean()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Voxel-wise ``-sum_c p_c log(p_c + 1e-6)`` of ``(B, C, ...)`` probabilities, in nats."""
    return -(probs * torch.log(probs + 1e-6)).sum(1)
