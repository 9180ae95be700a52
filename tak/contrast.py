"""TAK's cross-modal contrastive alignment (docs/algorithms.md §4.1 step 9): voxel sampling and the supervised
contrastive loss over voxel and text anchors.

>>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> # anchors 0, 1: log(1 + e^-1) each; anchor 2 has no positive (0): mean = 2/3 * 0.3133
>>> round(float(supervised_contrastive(a, torch.tensor([0, 0, 1]), 1.0)), 4)
0.2088
"""
from __future__ import annotations

from typing import Any

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
    consumed the random stream for every class). The draws are made view by view, class by class;
    the embeddings are then read with one gather (one index per voxel in the backward pass rather
    than a full-size gradient per class and view). On an accelerator :func:`sample_voxels_sorted`
    draws the same distribution in one pass (another random stream; ``draw_all`` has no effect there).

    Args:
        embeddings: ``(V, K, D, H, W)`` voxel embeddings of ``V`` views.
        labels: ``(V, D, H, W)`` class ids at the same grid; ``-1`` voxels are never sampled.
    Returns:
        ``(N, K)`` sampled embeddings and their ``(N,)`` labels.
    """
    if embeddings.device.type != "cpu":
        return sample_voxels_sorted(embeddings, labels, per_class)
    voxels_per_view = labels[0].numel() if len(labels) else 0
    picked, classes = [], []
    for view in range(labels.shape[0]):
        lab = labels[view].flatten()
        for cls in lab[lab >= 0].unique():
            idx = (lab == cls).nonzero().squeeze(1)
            if draw_all or idx.numel() > per_class:
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:per_class]]
            picked.append(idx + view * voxels_per_view)
            classes.append(torch.full((idx.numel(),), int(cls), dtype=torch.long, device=labels.device))
    if not picked:
        return embeddings.new_zeros((0, embeddings.shape[1])), labels.new_zeros((0,))
    rows = embeddings.flatten(2).transpose(1, 2).reshape(-1, embeddings.shape[1])  # (V * voxels, K)
    return rows.index_select(0, torch.cat(picked)), torch.cat(classes)


def sample_voxels_sorted(embeddings: torch.Tensor, labels: torch.Tensor, per_class: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_voxels` without a loop over views and classes (the accelerator form).

    Every valid voxel gets a uniform random key; sorted by (view, class) and by key within each
    group, the first ``per_class`` of a group are kept: a uniform sample without replacement of
    ``per_class`` voxels of each class and view, all of them where a class has fewer, as the loop
    draws, in about 20 kernel launches instead of several per class and view (each with a
    host-device synchronisation). Rows come view by view, class by class, as the loop's; within a
    class the order is random (the contrastive loss does not depend on the order).

    >>> emb = torch.arange(8.0).view(1, 1, 8, 1, 1)
    >>> feats, classes = sample_voxels_sorted(emb, torch.tensor([1, 2, 2, 1, 2, 2, 2, -1]).view(1, 8, 1, 1), 3)
    >>> classes.tolist(), sorted(feats[:2, 0].tolist())
    ([1, 1, 2, 2, 2], [0.0, 3.0])
    """
    flat = labels.flatten()
    valid = (flat >= 0).nonzero().squeeze(1)
    if valid.numel() == 0:
        return embeddings.new_zeros((0, embeddings.shape[1])), labels.new_zeros((0,))
    group = (valid // labels[0].numel()) * (1 << 31) + flat[valid]  # (view, class); class ids < 2^31
    order = torch.argsort(torch.rand(valid.numel(), device=flat.device))
    order = order[torch.argsort(group[order], stable=True)]
    counts = torch.unique_consecutive(group[order], return_counts=True)[1]
    starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    chosen = valid[order[torch.arange(order.numel(), device=flat.device) - starts < per_class]]
    rows = embeddings.flatten(2).transpose(1, 2).reshape(-1, embeddings.shape[1])  # (V * voxels, K)
    return rows.index_select(0, chosen), flat[chosen]


def supervised_contrastive_dense(anchors: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
                                 ) -> torch.Tensor:
    """:func:`supervised_contrastive` with plain autograd over the ``(N, N)`` similarity matrix (the
    reference's form; several ``N x N`` tensors are kept for the backward pass)."""
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
    per_anchor = -totals / (positives.sum(1).to(sim.dtype) + 1e-5)  # the count in the anchors' precision
    return per_anchor.mean()


DENSE_MAX_ANCHORS = 16_384  # accelerator: dense up to here (1 GiB per N x N float32 matrix; lambda_N = 80 is 15,392)
ROWS_PER_CHUNK = 256  # rows of the similarity matrix computed at once: 256 x N floats (about 8 MB at N = 8k)


def _row_chunks(counts: list[int]) -> list[tuple[int, int, int, int]]:
    """``(row_start, row_end, class_start, class_end)`` chunks of at most ``ROWS_PER_CHUNK`` rows, each
    inside one class's block of the label-sorted anchors."""
    chunks, start = [], 0
    for k in counts:
        for r in range(start, start + k, ROWS_PER_CHUNK):
            chunks.append((r, min(r + ROWS_PER_CHUNK, start + k), start, start + k))
        start += k
    return chunks


class _ChunkedSupCon(torch.autograd.Function):
    """The supervised contrastive loss over label-sorted, L2-normalised anchors, a block of rows at a
    time, recomputed in the backward pass: memory ``O(rows x N)`` instead of several ``N x N`` tensors.

    With ``s`` shifted by its (detached) row maximum, ``E = exp s`` and ``n_i`` the negatives' sum, the
    gradient of ``mean_i l_i`` with respect to ``s_ij`` is, for ``w_i = 1 / (N (|P(i)| + 1e-5))``:
    ``-w_i n_i / (E_ij + n_i)`` on positives, ``w_i E_ij sum_{p in P(i)} 1 / (E_ip + n_i)`` on
    negatives, 0 on the diagonal.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, counts: list[int], temperature: float) -> torch.Tensor:
        n = a.shape[0]
        chunks = _row_chunks(counts)
        shift, negatives, reciprocal_sum = a.new_empty(n), a.new_empty(n), a.new_empty(n)
        total = a.new_zeros((), dtype=torch.float64)
        for r0, r1, c0, c1 in chunks:
            s = (a[r0:r1] @ a.T).div_(temperature)
            shift[r0:r1] = s.max(dim=1).values
            s.sub_(shift[r0:r1, None])
            e = s.exp()
            neg = e[:, :c0].sum(1) + e[:, c1:].sum(1)
            negatives[r0:r1] = neg
            denom = e[:, c0:c1] + neg[:, None]
            terms = s[:, c0:c1] - denom.log()
            diagonal = torch.arange(r1 - r0, device=a.device)
            terms[diagonal, diagonal + (r0 - c0)] = 0.0
            inverse = denom.reciprocal_()
            inverse[diagonal, diagonal + (r0 - c0)] = 0.0
            reciprocal_sum[r0:r1] = inverse.sum(1)
            total += (-terms.sum(1) / (c1 - c0 - 1 + 1e-5)).sum().double()
        ctx.save_for_backward(a, shift, negatives, reciprocal_sum)
        ctx.chunks, ctx.temperature = chunks, temperature
        return (total / n).to(a.dtype) if n else a.new_tensor(float("nan"))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        a, shift, negatives, reciprocal_sum = ctx.saved_tensors
        n, tau = a.shape[0], ctx.temperature
        grad_a = torch.zeros_like(a)
        for r0, r1, c0, c1 in ctx.chunks:
            weight = grad / (n * (c1 - c0 - 1 + 1e-5))
            e = (a[r0:r1] @ a.T).div_(tau).sub_(shift[r0:r1, None]).exp_()
            neg = negatives[r0:r1, None]
            positives = e[:, c0:c1].add(neg).reciprocal_().mul_(neg).mul_(-weight)
            g = e.mul_(weight * reciprocal_sum[r0:r1, None])
            g[:, c0:c1] = positives
            diagonal = torch.arange(r1 - r0, device=a.device)
            g[diagonal, diagonal + r0] = 0.0
            grad_a[r0:r1] += g @ a
            grad_a += g.T @ a[r0:r1]
        return grad_a.div_(tau), None, None


def supervised_contrastive(anchors: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss over L2-normalised ``anchors`` ``(N, K)`` with ``labels`` ``(N,)``.

    ``l_i = -1/(|P(i)| + 1e-5) sum_{j in P(i)} [s_ij - log(exp s_ij + sum_{k in Neg(i)} exp s_ik)]``
    with ``s = a a^T / tau`` shifted by its row maximum, ``P(i)`` the other anchors of i's class and
    ``Neg(i)`` those of other classes; returns ``mean_i l_i``. Computed in fp32 (or fp64) on every device,
    also under autocast; on the CPU a block of rows at a time (:class:`_ChunkedSupCon`), on an
    accelerator in the plain form over the whole ``(N, N)`` matrix (:func:`supervised_contrastive_dense`,
    about 40 kernel launches instead of thousands) up to :data:`DENSE_MAX_ANCHORS` anchors (the
    default 40 voxels per class give about 7,700: a few hundred MB), chunked beyond.
    """
    precise = anchors if anchors.dtype == torch.float64 else anchors.float()
    with torch.autocast(anchors.device.type, enabled=False):
        if anchors.device.type != "cpu" and anchors.shape[0] <= DENSE_MAX_ANCHORS:  # launches, not memory, bind
            return supervised_contrastive_dense(precise, labels, temperature)
        order = torch.argsort(labels, stable=True)
        counts = torch.unique_consecutive(labels[order], return_counts=True)[1].tolist()
        return _ChunkedSupCon.apply(F.normalize(precise, dim=1)[order], counts, temperature)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Voxel-wise ``-sum_c p_c log(p_c + 1e-6)`` of ``(B, C, ...)`` probabilities, in nats."""
    return -(probs * torch.log(probs + 1e-6)).sum(1)
