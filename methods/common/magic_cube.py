"""MagicNet's magic-cube partition and recovery (spec 4.2, TAK steps 2, 5-7), shared by MagicNet, GA
and TAK.

A volume ``(B, C, D, H, W)`` is cut into ``n^3`` equal cubes. The cube list is in x-outer / z-inner
order (index ``n^2 x + n y + z`` for grid position ``(x, y, z)`` along D, H, W), as the reference
builds it; the cube-location target is ``x + n y + n^2 z`` (the reference's label).

Reference defect as a flag: the reference re-assembles the list with index ``x + n y + n^2 z``, which
swaps the x and z grid positions of 18 of the 27 cubes (``transposed=True`` reproduces it; the
default puts every cube back where it came from).
"""
from __future__ import annotations

import torch


def partition(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> cubes ``(B, n^3, C, D/n, H/n, W/n)`` in x-outer / z-inner order."""
    b, c, d, h, w = x.shape
    if d % n or h % n or w % n:
        raise ValueError(f"volume {tuple(x.shape[2:])} is not divisible into {n}^3 cubes")
    cubes = x.reshape(b, c, n, d // n, n, h // n, n, w // n)
    return cubes.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, n**3, c, d // n, h // n, w // n)


def assemble(cubes: torch.Tensor, n: int, transposed: bool = False) -> torch.Tensor:
    """Inverse of :func:`partition` (``transposed=True``: the reference's x/z-swapped placement)."""
    b, _, c, dc, hc, wc = cubes.shape
    if transposed:  # position (x, y, z) receives list[x + n y + n^2 z]
        order = torch.tensor([x + n * y + n * n * z for x in range(n) for y in range(n) for z in range(n)])
        cubes = cubes[:, order.to(cubes.device)]
    grid = cubes.reshape(b, n, n, n, c, dc, hc, wc).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return grid.reshape(b, c, n * dc, n * hc, n * wc)


def location_labels(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Cube-location target of each list entry: ``x + n y + n^2 z`` (length ``n^3``)."""
    return torch.tensor([x + n * y + n * n * z for x in range(n) for y in range(n) for z in range(n)], device=device)


def mix_across_batch(x: torch.Tensor, n: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-image partition: cube position ``l`` of mixed sample ``b`` comes from sample
    ``perms[l, b]`` (an independent permutation of the batch per position).

    Returns:
        mixed volumes ``(B, C, D, H, W)`` and ``perms`` ``(n^3, B)``.
    """
    b = x.shape[0]
    perms = torch.stack([torch.randperm(b, generator=generator) for _ in range(n**3)]).to(x.device)
    cubes = partition(x, n)
    positions = torch.arange(n**3, device=x.device)[:, None].expand(-1, b)
    mixed = cubes[perms, positions].transpose(0, 1)  # (B, n^3, ...)
    return assemble(mixed, n), perms


def unmix(mixed: torch.Tensor, perms: torch.Tensor, n: int) -> torch.Tensor:
    """Cross-image recovery: undo :func:`mix_across_batch` on any volume-aligned tensor (images,
    features at a coarser scale, logits) whose spatial size is divisible by ``n``."""
    b = mixed.shape[0]
    inverse = torch.argsort(perms, dim=1)  # recovered sample b, position l <- mixed sample inverse[l, b]
    cubes = partition(mixed, n)
    positions = torch.arange(n**3, device=mixed.device)[:, None].expand(-1, b)
    return assemble(cubes[inverse, positions].transpose(0, 1), n)
