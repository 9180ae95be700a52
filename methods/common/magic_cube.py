"""MagicNet's magic-cube partition and recovery (docs/algorithms.md §4.2, TAK steps 2, 5-7), shared by MagicNet, GA
and TAK.

A volume ``(B, C, D, H, W)`` is cut into a grid of ``nx x ny x nz`` equal cubes (the reference: 3 x 3 x
3 cubes of 32^3 in a 96^3 patch; an int ``n`` means ``n x n x n``). The cube list is in x-outer /
z-inner order (index ``x ny nz + y nz + z`` for grid position ``(x, y, z)`` along D, H, W), as the
reference builds it; the cube-location target is ``x + nx y + nx ny z`` (the reference's label).

Reference defect as a flag: the reference re-assembles the list with index ``x + nx y + nx ny z``,
which swaps the x and z grid positions of 18 of the 27 cubes (``transposed=True`` reproduces it; the
default puts every cube back where it came from).
"""
from __future__ import annotations

from typing import Sequence

import torch

Grid = tuple[int, int, int]


def as_grid(n: int | Sequence[int]) -> Grid:
    """``3 -> (3, 3, 3)``; a 3-sequence is returned as a tuple of ints."""
    if isinstance(n, int):
        return (n, n, n)
    grid = tuple(int(v) for v in n)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"cube grid must be an int or three positive ints, got {n!r}")
    return grid  # type: ignore[return-value]


def _positions(grid: Grid) -> list[tuple[int, int, int]]:
    nx, ny, nz = grid
    return [(x, y, z) for x in range(nx) for y in range(ny) for z in range(nz)]


def partition(x: torch.Tensor, n: int | Sequence[int]) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> cubes ``(B, K, C, D/nx, H/ny, W/nz)``, ``K = nx ny nz``, x-outer order."""
    nx, ny, nz = as_grid(n)
    b, c, d, h, w = x.shape
    if d % nx or h % ny or w % nz:
        raise ValueError(f"volume {tuple(x.shape[2:])} is not divisible into a {nx}x{ny}x{nz} cube grid")
    cubes = x.reshape(b, c, nx, d // nx, ny, h // ny, nz, w // nz)
    return cubes.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, nx * ny * nz, c, d // nx, h // ny, w // nz)


def assemble(cubes: torch.Tensor, n: int | Sequence[int], transposed: bool = False) -> torch.Tensor:
    """Inverse of :func:`partition` (``transposed=True``: the reference's x/z-swapped placement)."""
    nx, ny, nz = as_grid(n)
    b, _, c, dc, hc, wc = cubes.shape
    if transposed:  # position (x, y, z) receives list[x + nx y + nx ny z]
        order = torch.tensor([x + nx * y + nx * ny * z for x, y, z in _positions((nx, ny, nz))])
        cubes = cubes[:, order.to(cubes.device)]
    grid = cubes.reshape(b, nx, ny, nz, c, dc, hc, wc).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return grid.reshape(b, c, nx * dc, ny * hc, nz * wc)


def location_labels(n: int | Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Cube-location target of each list entry: ``x + nx y + nx ny z`` (length ``K``)."""
    nx, ny, nz = grid = as_grid(n)
    return torch.tensor([x + nx * y + nx * ny * z for x, y, z in _positions(grid)], device=device)


def mix_across_batch(x: torch.Tensor, n: int | Sequence[int], generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-image partition: cube position ``l`` of mixed sample ``b`` comes from sample
    ``perms[l, b]`` (an independent permutation of the batch per position).

    Returns:
        mixed volumes ``(B, C, D, H, W)`` and ``perms`` ``(K, B)``.
    """
    grid = as_grid(n)
    k, b = grid[0] * grid[1] * grid[2], x.shape[0]
    perms = torch.stack([torch.randperm(b, generator=generator) for _ in range(k)]).to(x.device)
    cubes = partition(x, grid)
    positions = torch.arange(k, device=x.device)[:, None].expand(-1, b)
    mixed = cubes[perms, positions].transpose(0, 1)  # (B, K, ...)
    return assemble(mixed, grid), perms


def unmix(mixed: torch.Tensor, perms: torch.Tensor, n: int | Sequence[int]) -> torch.Tensor:
    """Cross-image recovery: undo :func:`mix_across_batch` on any volume-aligned tensor (images,
    features at a coarser scale, logits) whose spatial size is divisible by the grid."""
    b = mixed.shape[0]
    inverse = torch.argsort(perms, dim=1)  # recovered sample b, position l <- mixed sample inverse[l, b]
    cubes = partition(mixed, n)
    positions = torch.arange(perms.shape[0], device=mixed.device)[:, None].expand(-1, b)
    return assemble(cubes[inverse, positions].transpose(0, 1), n)
