"""Magic-cube partition and recovery: exact inverses (corrected) and the reference's x/z swap."""
from __future__ import annotations

import torch

from methods.common.magic_cube import assemble, location_labels, mix_across_batch, partition, unmix


def test_partition_order_is_x_outer_z_inner() -> None:
    x = torch.arange(6**3, dtype=torch.float32).reshape(1, 1, 6, 6, 6)
    cubes = partition(x, 3)
    assert cubes.shape == (1, 27, 1, 2, 2, 2)
    # list index 9x + 3y + z holds the cube at grid (x, y, z): check (x, y, z) = (1, 0, 2)
    torch.testing.assert_close(cubes[0, 9 * 1 + 0 + 2, 0], x[0, 0, 2:4, 0:2, 4:6])
    assert location_labels(3)[9 * 1 + 0 + 2] == 1 + 0 + 9 * 2


def test_assemble_is_the_exact_inverse() -> None:
    x = torch.randn(2, 3, 12, 9, 6)
    torch.testing.assert_close(assemble(partition(x, 3), 3), x, rtol=0, atol=0)


def test_transposed_reassembly_moves_18_of_27_cubes() -> None:
    x = torch.randn(1, 1, 9, 9, 9)
    wrong = partition(assemble(partition(x, 3), 3, transposed=True), 3)
    right = partition(x, 3)
    moved = sum(not torch.equal(wrong[0, i], right[0, i]) for i in range(27))
    assert moved == 18  # cubes with x == z stay in place (9 of them)


def test_cross_image_mix_and_unmix() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 2, 12, 12, 12)
    mixed, perms = mix_across_batch(x, 3, torch.Generator().manual_seed(1))
    assert perms.shape == (27, 4) and all(sorted(p.tolist()) == [0, 1, 2, 3] for p in perms)
    assert not torch.equal(mixed, x)
    # every cube position keeps the same set of cubes across the batch
    for pos in range(27):
        before = sorted(partition(x, 3)[:, pos].sum(dim=(1, 2, 3, 4)).tolist())
        after = sorted(partition(mixed, 3)[:, pos].sum(dim=(1, 2, 3, 4)).tolist())
        assert before == after
    torch.testing.assert_close(unmix(mixed, perms, 3), x, rtol=0, atol=0)
    # recovery works on coarser aligned tensors too (features at half resolution)
    pooled = torch.nn.functional.avg_pool3d(mixed, 2)
    torch.testing.assert_close(unmix(pooled, perms, 3), torch.nn.functional.avg_pool3d(x, 2))
