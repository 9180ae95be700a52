"""MagicNet and GA pieces against hand-computed values: GADice, GACE, the class-distribution logger,
the blending source, the location head's sizing and the patch checks."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.errors import ConfigError
from methods import get_method
from methods.common.ga_losses import ga_ce, ga_dice, magic_dice
from methods.common.magicnet_parts import ClassDistributionLogger


def test_magic_dice_by_hand() -> None:
    probs = torch.tensor([[0.9, 0.4], [0.1, 0.6]]).view(1, 2, 2, 1, 1)  # voxels v0, v1
    labels = torch.tensor([0, 1]).view(1, 2, 1, 1)
    d0 = 1 - 2 * 0.9 / (0.81 + 0.16 + 1)
    d1 = 1 - 2 * 0.6 / (0.01 + 0.36 + 1)
    assert magic_dice(probs, labels).item() == pytest.approx((d0 + d1) / 2, rel=1e-6)


def test_ga_dice_absent_class_value_and_gradient() -> None:
    """Class 2 is absent from the batch target: its term is mean(p^2) and its gradient p/N."""
    probs = torch.tensor([[0.7, 0.2, 0.5], [0.2, 0.6, 0.1], [0.1, 0.2, 0.4]]).view(1, 3, 3, 1, 1)
    probs.requires_grad_(True)
    labels = torch.tensor([0, 1, 0]).view(1, 3, 1, 1)
    loss = ga_dice(probs, labels)
    g = torch.tensor([[1., 0, 1], [0, 1, 0]])
    p = probs.detach().view(3, 3)
    present = [1 - 2 * (p[c] * g[c]).sum() / ((p[c] ** 2).sum() + g[c].sum()) for c in range(2)]
    absent = (p[2] ** 2).mean()
    assert loss.item() == pytest.approx(float((sum(present) + absent) / 3), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(probs.grad.view(3, 3)[2], p[2] / 3 / 3)  # (1/C) * p_v / N
    # MagicNet's Dice gives an absent class a constant term and no push-down of its probability
    probs.grad = None
    magic_dice(probs, labels).backward()
    assert probs.grad.view(3, 3)[2].abs().sum() > 0  # 1 - e/(sum p^2 + e): gradient only via sum p^2 ~ 0
    assert torch.all(probs.grad.view(3, 3)[2] < 1e-8)


def test_ga_ce_top_k_and_class_normalisation() -> None:
    logits = torch.zeros(1, 2, 10, 1, 1)
    logits[0, 1, :, 0, 0] = torch.tensor([3., 2., 1., 0., -1., -2., -3., 0., 0., 0.])  # class-1 logit
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 0, 0]).view(1, 10, 1, 1)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none").flatten()
    for k_percent, gamma in [(40, 0.5), (40, 0.0), (40, 1.0), (100, 0.5)]:
        k = int(10 * k_percent // 100)
        kept = ce.topk(k).indices
        expected = 0.0
        for c in (0, 1):
            members = kept[labels.flatten()[kept] == c]
            n_c = len(members)
            w = (n_c + 1e-10) ** (1 - gamma) * k ** gamma
            expected += float(ce[members].sum()) / (w + 1e-10)
        assert ga_ce(logits, labels, k_percent, gamma).item() == pytest.approx(expected, rel=1e-6)
    # gamma = 1 is the plain mean over the kept voxels
    assert ga_ce(logits, labels, 100, 1.0).item() == pytest.approx(ce.mean().item(), rel=1e-6)


def test_class_logger_publishes_every_window_without_momentum() -> None:
    logger = ClassDistributionLogger(3, window=2)
    assert logger.class_weights() is None
    logger.update(torch.tensor([0, 0, 0, 1]), step=0)
    logger.update(torch.tensor([0, 2, 2, 1]), step=1)  # window complete: counts 4, 2, 2
    torch.testing.assert_close(logger.class_weights(), torch.tensor([1.0, 0.5, 0.5]))
    logger.update(torch.tensor([1, 1, 1, 1]), step=2)
    logger.update(torch.tensor([1, 1, 2, 2]), step=3)  # replaced, not averaged: 0, 6, 2
    torch.testing.assert_close(logger.class_weights(), torch.tensor([0.0, 1.0, 1 / 3]))
    sharpened = logger.class_weights(temperature=0.5)  # d^2 normalised: 0, 36, 4 -> / max
    torch.testing.assert_close(sharpened, torch.tensor([0.0, 1.0, 4 / 36]))


def _method(name: str, **overrides: object):
    cls = get_method(name)
    torch.manual_seed(0)
    return cls(cls.Config(base_filters=4, cube_grid=(2, 1, 1), location_hidden=32, **overrides), 3,
               max_iterations=10, patch=(32, 32, 32))


def test_location_head_is_sized_from_patch_and_grid() -> None:
    method = _method("magicnet")
    first, last = method.student.location_head[0], method.student.location_head[-1]
    assert first.in_features == 16 * 4 * 1 * 2 * 2 and last.out_features == 2  # 16x32x32 cubes -> 1x2x2
    reference = get_method("ga")(get_method("ga").Config(), 16, 1, device="meta")  # 96^3, 3x3x3 of 32^3
    assert reference.student.location_head[0].in_features == 2048
    assert reference.student.location_head[-1].out_features == 27


@pytest.mark.parametrize(("grid", "message"), [((3, 3, 3), "multiple of 16"), ((2, 2, 2), "InstanceNorm"),
                                               ((2, 2, 1), "1x1x2 bottleneck")])
def test_patch_that_cannot_hold_the_cubes_is_refused(grid: tuple[int, int, int], message: str) -> None:
    cls = get_method("magicnet")
    with pytest.raises(ConfigError, match=message):
        cls(cls.Config(base_filters=4, cube_grid=grid), 3, 10, patch=(32, 32, 32))


def test_instance_norm_over_a_two_voxel_bottleneck_leaves_a_sign_and_a_large_gradient() -> None:
    """The cause of the old cpu profile's failures (issue 29): its 2 x 2 x 1 grid in a 32^3 patch gave
    16x16x32 cubes with a 1x1x2 bottleneck. There every channel of x5 is (v, 0) or (0, v) with v near 1:
    which of two voxels is larger, so the location head saw no position (its loss sat at ln 4), and the
    bottleneck stage's gradient was about 15-30x that of the reference's 32^3 cubes, which TAK's
    text-driven head (it reads the re-assembled cube features x3..x5) carried into its supervised loss."""
    from methods.common.magic_cube import as_grid, partition
    from methods.common.vnet import VNet
    torch.manual_seed(0)
    net = VNet(1, 3, 4, "instance")
    x5 = net.encode(partition(torch.rand(2, 1, 32, 32, 32), as_grid((2, 2, 1))).flatten(0, 1))[-1]
    assert x5.shape[2:] == (1, 1, 2)
    assert bool(((x5[..., 0] == 0) | (x5[..., 1] == 0)).all())  # one of every pair is zero after the ReLU
    assert float((x5.amax(-1) > 0.9).float().mean()) > 0.5      # the other mostly about 1

    def bottleneck_gradient(patch: tuple[int, int, int], grid: tuple[int, int, int]) -> float:
        norms = []
        for seed in range(3):
            torch.manual_seed(seed)
            backbone = VNet(1, 3, 4, "instance")
            cubes = partition(torch.rand(4, 1, *patch), as_grid(grid)).flatten(0, 1)
            backbone(cubes).logsumexp(1).mean().backward()
            norms.append(float(sum(p.grad.norm() ** 2 for p in backbone.encoder[-1].parameters()) ** 0.5))
        return sum(norms) / len(norms)

    assert bottleneck_gradient((32, 32, 32), (2, 2, 1)) > 5 * bottleneck_gradient((64, 64, 32), (2, 2, 1))


@pytest.mark.parametrize("profile_name", ["smoke", "cpu"])
def test_the_profiles_cubes_can_be_normalised_and_located(profile_name: str) -> None:
    """Under every CPU profile the magic-cube methods build (the bottleneck rule holds); under ``cpu``
    a sample has 4 cubes (the location head's BatchNorm normalises over them: over 2 it would leave a
    sign again) with a 1x2x2 bottleneck."""
    from benchmarks.config import load_profile
    profile = load_profile(profile_name)
    grid = profile.method_overrides["cube_grid"]
    cls = get_method("ga")
    cls(cls.Config(base_filters=4, cube_grid=grid, location_hidden=8), 3, 10, patch=profile.patch, device="meta")
    if profile_name == "cpu":
        assert grid[0] * grid[1] * grid[2] == 4
        assert sorted(p // g // 16 for p, g in zip(profile.patch, grid)) == [1, 2, 2]


@pytest.mark.parametrize(("flag", "source"), [(False, "unlabeled"), (True, "labeled")])
def test_ga_blending_source_flag(flag: bool, source: str) -> None:
    """GA's reference blends the labeled samples' cube prediction (flag True); corrected: unlabeled."""
    method = _method("ga", blend_from_labeled_cubes=flag)
    x = torch.rand(4, 1, 32, 32, 32)
    from methods.common.magic_cube import partition
    with torch.no_grad():
        feats = method.student.encode(partition(x, method.grid).flatten(0, 1))
        blended = method.cube_logits_for_blending(feats, 2, 2)
        part = x[:2] if source == "labeled" else x[2:]
        feats_part = method.student.encode(partition(part, method.grid).flatten(0, 1))
        expected = method.assemble_cubes(method.student, feats_part, 2)
    torch.testing.assert_close(blended, expected)


def test_blending_starts_after_blend_start_and_uses_class_weights() -> None:
    method = _method("magicnet", blend_start_fraction=0.1, dist_window=1)  # 10 iterations: after step 1
    teacher = torch.randn(2, 3, 32, 32, 32)
    feats = [torch.zeros(1)] * 5
    pseudo, blended = method.blended_pseudo_labels(teacher, feats, 2, step=1)
    assert blended is None and torch.equal(pseudo, teacher.argmax(1))
    method.class_logger.update(torch.tensor([0, 0, 1]), step=0)  # weights: 1, 0.5, 0
    x = torch.rand(4, 1, 32, 32, 32)
    from methods.common.magic_cube import partition
    with torch.no_grad():
        cube_feats = method.student.encode(partition(x, method.grid).flatten(0, 1))
        pseudo, blended = method.blended_pseudo_labels(teacher, cube_feats, 2, step=2)
        cube = method.cube_logits_for_blending(cube_feats, 2, 2)
    w = torch.tensor([1.0, 0.5, 0.0])[teacher.argmax(1)].unsqueeze(1)
    torch.testing.assert_close(blended, (1 - w) * teacher + w * cube)


def test_reference_ramp_is_tiny_on_a_short_run() -> None:
    method = _method("ga", reference_ramp=True)
    assert method.consistency_weight(16999) == pytest.approx(0.1 * math.exp(-5 * (1 - 48 / 200) ** 2))
    assert method.consistency_weight(16999) < 0.0057
    assert _method("ga").consistency_weight(10) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["magicnet", "ga", "tak"])
def test_the_magic_cube_methods_blend_under_the_cpu_profile(name: str) -> None:
    """Blending starts at the same share of every profile's budget: within the cpu budget (an absolute
    iteration 100 never came under the 12- and 60-iteration profiles)."""
    from benchmarks.config import load_profile, load_study
    from benchmarks.plan import resolve_method_config
    profile, study = load_profile("cpu"), load_study("table2")
    config = resolve_method_config(get_method(name), profile, study, name)
    budget = study.budget["cpu"]
    start = config.blend_start_fraction * budget
    assert start < budget / 10 and config.dist_window < budget / 2
    assert round(config.blend_start_fraction * study.budget["paper"]) == 100  # the references' iteration 100
