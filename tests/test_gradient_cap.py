"""Why TAK ended all background under the cpu profile, and the profile's gradient cap (issue 29).

At 20x the references' rates TAK's text-driven head lost its first generated layer: the share of
active first-layer units fell from 45 % to 0 % by iteration 160, the head's output became the same
for every voxel, and no gradient could bring it back (docs/measured/2026-12-06-budget-and-tak-head.md).
The first test pins that mechanism; the others pin the cap every method's step gets under a profile
with ``grad_clip_norm`` and that the field leaves the keys of earlier runs alone."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from benchmarks.config import load_profile, load_study
from benchmarks.errors import ConfigError
from benchmarks.plan import StudyPlan
from methods import Batch, get_method
from methods.common.vnet import VNet
from tak.model import TAKNetwork

B1 = slice(136, 144)  # the first generated layer's biases in the controller's 153 outputs
W1 = slice(0, 64)     # its weights


def _tak_network() -> TAKNetwork:
    torch.manual_seed(0)
    return TAKNetwork(VNet(1, 4, 4, "instance"), text=torch.randn(2, 4, 12), location_head=torch.nn.Identity())


def test_a_dead_first_generated_layer_makes_the_head_constant_and_cannot_recover() -> None:
    net = _tak_network()
    x = torch.rand(2, 1, 32, 32, 32)
    labels = torch.randint(0, 4, (2, 32, 32, 32))
    alive = net(x)
    assert alive.flatten(2).std(-1).mean() < 0.05  # at initialisation the head is already nearly flat
    assert alive.flatten(2).std(-1).min() > 0
    F.cross_entropy(alive, labels).backward()
    assert net.text_head.head_input[-1].weight.grad.abs().max() > 0  # alive: voxel features get a gradient
    net.zero_grad(set_to_none=True)
    with torch.no_grad():  # what one large step on the controller did between iterations 70 and 80
        net.text_head.controller.bias[B1] -= 100.0
    dead = net(x)
    assert dead.flatten(2).std(-1).max() == 0  # every voxel gets the same logits: one class everywhere
    F.cross_entropy(dead, labels).backward()
    controller = net.text_head.controller
    assert controller.weight.grad[W1].abs().max() == 0 and controller.bias.grad[B1].abs().max() == 0
    voxel_path = net.text_head.head_input[-1].weight  # the only way voxel features reach the logits
    assert voxel_path.grad.abs().max() == 0  # what remains learns per-sample constants (the bias chain)


@pytest.mark.parametrize("cap", [0.0, 0.5])
def test_every_step_is_capped_at_the_profile_norm(cap: float) -> None:
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=4, dropout=False), 3, max_iterations=10, patch=(16, 16, 16))
    method.grad_clip_norm = cap
    torch.manual_seed(0)
    batch = Batch(torch.rand(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16)), torch.zeros(0, 1, 16, 16, 16))
    logits = method.net(batch.image_l)
    method.backward_step(100.0 * F.cross_entropy(logits, batch.label_l))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in method.net.parameters() if p.grad is not None]))
    assert (norm <= cap * (1 + 1e-5)) if cap else (norm > 10)


def test_the_cap_enters_the_key_only_when_set(tiny_cohort: Path) -> None:
    smoke = load_profile("smoke")
    plan = StudyPlan(load_study("table2"), smoke, ["supervised"], data_dir=tiny_cohort, progress=False)
    off = plan.cell("supervised", 0)
    assert "grad_clip_norm" not in off.resolved()["profile"]  # runs recorded before the field keep their keys
    capped = dataclasses.replace(off, profile=dataclasses.replace(smoke, grad_clip_norm=1.0))
    assert capped.resolved()["profile"]["grad_clip_norm"] == 1.0 and capped.run_key != off.run_key
    assert capped.training_key != off.training_key


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_a_bad_cap_names_the_profile(value: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.config as config
    raw = yaml.safe_load(config.PROFILES_FILE.read_text())
    raw["smoke"]["grad_clip_norm"] = value
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(config, "PROFILES_FILE", path)
    with pytest.raises(ConfigError, match=f"{path}:smoke: grad_clip_norm"):
        load_profile("smoke")
