"""Conformance of every registered method, plus the shared building blocks (V-Net, EMA, ramps)."""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from methods import Batch, UnknownMethodError, get_method, list_methods
from methods.common.ema import ema_update, make_teacher
from methods.common.ramps import poly_lr, sigmoid_rampup
from methods.common.vnet import VNet, count_parameters

PATCH = (16, 16, 16)
NUM_CLASSES = 4
CLASS_NAMES = ["background", "spleen", "right_kidney", "left_kidney"]  # AMOS order (TAK encodes them)


CUBE_PATCH = (32, 32, 32)  # magic-cube methods: a 2 x 2 x 1 grid of 16x16x32 cubes (the smallest valid)


def patch_of(name: str) -> tuple[int, int, int]:
    return CUBE_PATCH if "cube_grid" in {f.name for f in dataclasses.fields(get_method(name).Config)} else PATCH


def make_batch(seed: int = 0, patch: tuple[int, int, int] = PATCH) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(2, 1, *patch, generator=g), torch.randint(0, NUM_CLASSES, (2, *patch), generator=g),
                 torch.rand(2, 1, *patch, generator=g))


def build(name: str, seed: int = 0, **overrides: object):
    torch.manual_seed(seed)
    cls = get_method(name)
    patch = patch_of(name)
    if patch == CUBE_PATCH:
        overrides = {"cube_grid": (2, 1, 1), "location_hidden": 64, **overrides}
    method = cls(cls.Config(base_filters=4, **overrides), NUM_CLASSES, max_iterations=10, patch=patch,
                 class_names=CLASS_NAMES)
    labels = [np.random.default_rng(i).integers(0, NUM_CLASSES, (20, 20, 20)) for i in range(3)]
    method.observe_data(labels, iterations_per_epoch=5)
    return method


@pytest.mark.parametrize("name", list_methods())
def test_two_iterations_finite_and_predict_shape(name: str) -> None:
    method = build(name)
    patch = patch_of(name)
    for step in range(2):
        logs = method.train_step(make_batch(step, patch), step)
        assert logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert method.predict(torch.rand(1, 1, *patch)).shape == (1, NUM_CLASSES, *patch)
    assert method.inference_modules() and count_parameters(*method.inference_modules().values()) > 0


@pytest.mark.parametrize("name", list_methods())
def test_same_seed_same_numbers(name: str) -> None:
    def run() -> list[float]:
        method = build(name, seed=3)
        torch.manual_seed(7)
        return [method.train_step(make_batch(s, patch_of(name)), s)["loss"] for s in range(2)]

    assert run() == run()


@pytest.mark.parametrize("name", list_methods())
def test_checkpoint_round_trip(name: str) -> None:
    method, patch = build(name), patch_of(name)
    method.train_step(make_batch(0, patch), 0)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    restored = build(name, seed=99)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    x = torch.rand(1, 1, *patch)
    torch.testing.assert_close(restored.predict(x), method.predict(x))
    torch.manual_seed(1)
    a = method.train_step(make_batch(5, patch), 1)["loss"]
    torch.manual_seed(1)
    b = restored.train_step(make_batch(5, patch), 1)["loss"]
    assert a == pytest.approx(b, rel=1e-5)


SEMI_SUPERVISED = [n for n in list_methods() if get_method(n).unsupervised_weight_field]


@pytest.mark.parametrize("name", SEMI_SUPERVISED)
def test_unsupervised_term_sends_gradient(name: str) -> None:
    """The USB bug class: with everything else equal, switching the unlabeled loss on must change
    the inference networks' update (no normalisation, no dropout: labeled and unlabeled samples do not
    interact through normalisation)."""
    field = get_method(name).unsupervised_weight_field

    def updated_params(weight: float) -> list[torch.Tensor]:
        method = build(name, seed=0, norm="none", dropout=False, **{field: weight})
        torch.manual_seed(11)
        method.train_step(make_batch(2, patch_of(name)), step=10)  # ramp-ups saturated (budget 10)
        return [p.detach().clone() for m in method.inference_modules().values() for p in m.parameters()]

    without, with_ = updated_params(0.0), updated_params(1.0)
    assert any(not torch.equal(a, b) for a, b in zip(without, with_))


def test_mean_teacher_consistency_sends_gradient_to_student() -> None:
    """The USB bug class: the unsupervised term must reach the student's parameters."""
    method = build("mean_teacher")
    batch = make_batch()
    logits_u = method.student(batch.image_u)
    with torch.no_grad():
        teacher = method.teacher(batch.image_u + 0.05)
    from methods.common.losses import softmax_mse
    softmax_mse(logits_u, teacher).backward()
    grads = [p.grad.abs().sum().item() for p in method.student.parameters() if p.grad is not None]
    assert grads and sum(grads) > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_mean_teacher_teacher_follows_ema() -> None:
    method = build("mean_teacher")
    before = [p.clone() for p in method.teacher.parameters()]
    method.train_step(make_batch(), 0)  # alpha = min(1 - 1/1, 0.99) = 0: teacher copies the student
    for t, s, b in zip(method.teacher.parameters(), method.student.parameters(), before):
        torch.testing.assert_close(t, s)
    assert any(not torch.equal(t, b) for t, b in zip(method.teacher.parameters(), before))


def test_mean_teacher_weight_ramps_over_budget() -> None:
    method = build("mean_teacher")
    assert method.consistency_weight(0) == pytest.approx(0.1 * 0.006737947)
    assert method.consistency_weight(10) == pytest.approx(0.1)


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(UnknownMethodError) as info:
        get_method("dhcc")
    assert "dhcc" in str(info.value) and "mean_teacher" in str(info.value) and "supervised" in str(info.value)


def test_unknown_config_key_and_wrong_type_are_named() -> None:
    from methods.common.errors import ConfigError
    with pytest.raises(ConfigError, match="study.yaml: unknown key.*consistancy"):
        get_method("mean_teacher").resolve_config({"consistancy": 0.2}, "study.yaml")
    with pytest.raises(ConfigError, match=r"study.yaml.consistency: expected float, got 'high' \(str\)"):
        get_method("mean_teacher").resolve_config({"consistency": "high"}, "study.yaml")
    config = get_method("ga").resolve_config({"consistency": 1, "cube_grid": [2, 2, 1]}, "study.yaml")
    assert config.consistency == 1.0 and isinstance(config.consistency, float) and config.cube_grid == (2, 2, 1)


@pytest.mark.parametrize(("nf", "norm", "classes", "expected"), [
    (16, "instance", 16, 9_443_504),   # MagicNet/TAK backbone: 9.44 M (docs/algorithms.md §1.1)
    (16, "batch", 16, 9_449_104),      # GA-CPS: 9.45 M
    (32, "batch", 14, 37_778_126),     # DHC family: 37.78 M
])
def test_vnet_parameter_counts(nf: int, norm: str, classes: int, expected: int) -> None:
    assert count_parameters(VNet(1, classes, nf, norm)) == expected


def test_vnet_rejects_nothing_silently_and_keeps_shape() -> None:
    net = VNet(1, 3, 4, "batch", dropout=True).eval()
    assert net(torch.rand(2, 1, 32, 16, 48)).shape == (2, 3, 32, 16, 48)


def test_ema_alpha_schedule() -> None:
    student = torch.nn.Linear(2, 2)
    teacher = make_teacher(student)
    assert ema_update(teacher, student, 0) == 0.0
    assert ema_update(teacher, student, 1) == 0.5
    assert ema_update(teacher, student, 10_000) == 0.99
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
    ema_update(teacher, student, 1)
    torch.testing.assert_close(teacher.weight, torch.full((2, 2), 0.5))


def test_ramps() -> None:
    assert sigmoid_rampup(0, 100) == pytest.approx(0.006737947)
    assert sigmoid_rampup(50, 100) == pytest.approx(0.2865048)
    assert sigmoid_rampup(150, 100) == 1.0
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.03, 10, 100) == pytest.approx(0.03 * 0.9**0.9)


@pytest.mark.parametrize(("ema_step", "copies_student"), [("epoch", True), ("iteration", False)])
def test_uamt_epoch_ema_flag_reproduces_the_reference_defect(ema_step: str, copies_student: bool) -> None:
    """DHC's UA-MT passes the epoch to the EMA: during epoch 0 (alpha = 0) the teacher is a copy."""
    method = build("uamt", ema_step=ema_step)  # build(): 5 iterations per epoch
    for step in range(3):
        method.train_step(make_batch(step), step)
    same = all(torch.equal(t, s) for t, s in zip(method.teacher.parameters(), method.student.parameters()))
    assert same is copies_student


def test_desco_maps_b_uncertainty_back_along_the_swapped_axes() -> None:
    """B's uncertainty is computed on the swapped view and must come back with D and H swapped again
    (version 2 swapped H and W of the channel-less map); a non-cubic patch trains."""
    from methods.desco import other_view
    entropy = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    swapped = other_view(entropy)
    assert swapped.shape == (2, 4, 3, 5) and swapped[1, 2, 0, 4] == entropy[1, 0, 2, 4]
    assert torch.equal(other_view(swapped), entropy)
    cls = get_method("desco")
    method = cls(cls.Config(base_filters=2, uncertainty_passes=2), 3, max_iterations=4, patch=(16, 16, 32))
    batch = Batch(torch.rand(2, 1, 16, 16, 32), torch.randint(0, 3, (2, 16, 16, 32)), torch.rand(2, 1, 16, 16, 32))
    assert math.isfinite(method.train_step(batch, 0)["loss"])
