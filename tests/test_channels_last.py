"""The ``channels_last`` profile setting (on for ``paper``): every method computes the same losses and
predictions with its networks and image batches in ``torch.channels_last_3d`` as in the default layout.

Compared in float64 on one thread: in float32 the weight gradients of these small BatchNorm networks
carry about 1 % relative error against float64 in *either* layout (0.8 % contiguous, 1.5 % channels
last), so two float32 trainings part after a step whatever the layout; in float64 both layouts agree
to 1e-9, which is what shows that the harness's conversion changes no arithmetic."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.training import to_channels_last
from methods import Batch, get_method, list_methods

PATCH, CUBE_PATCH = (16, 16, 16), (32, 32, 32)  # the magic-cube methods need two cubes of 16 x 32 x 32


def _run(name: str, channels_last: bool) -> tuple[list[float], torch.Tensor]:
    cls = get_method(name)
    cube = "cube_grid" in {f.name for f in dataclasses.fields(cls.Config)}
    overrides = {"cube_grid": (2, 1, 1), "location_hidden": 32} if cube else {}
    patch = CUBE_PATCH if cube else PATCH
    torch.manual_seed(0)
    method = cls(cls.Config(base_filters=4, **overrides), 4, max_iterations=10, patch=patch,
                 class_names=["background", "spleen", "right_kidney", "left_kidney"])
    method.observe_data([np.random.default_rng(i).integers(0, 4, (20, 20, 20)) for i in range(2)], 5)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    if channels_last:
        to_channels_last(method)
    losses = []
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        batch = Batch(torch.rand(2, 1, *patch, generator=g).contiguous(memory_format=fmt),
                      torch.randint(0, 4, (2, *patch), generator=g),
                      torch.rand(2, 1, *patch, generator=g).contiguous(memory_format=fmt))
        torch.manual_seed(100 + step)
        losses.append(float(method.train_step(batch, step)["loss"]))
    x = torch.rand(1, 1, *patch, generator=torch.Generator().manual_seed(5)).contiguous(memory_format=fmt)
    return losses, method.predict(x)


@pytest.fixture
def float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list_methods())
def test_channels_last_gives_the_contiguous_numbers(name: str, float64_one_thread: None) -> None:
    losses, logits = _run(name, False)
    losses_cl, logits_cl = _run(name, True)
    assert losses_cl == pytest.approx(losses, rel=1e-7, abs=1e-9)
    torch.testing.assert_close(logits_cl.contiguous(), logits, rtol=1e-7, atol=1e-9)


def test_the_networks_are_in_channels_last() -> None:
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=4), 3, max_iterations=2, patch=PATCH)
    to_channels_last(method)
    weights = [p for m in method.modules().values() for p in m.parameters() if p.dim() == 5]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights)
