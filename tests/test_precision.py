"""bfloat16 on the CPU: the V-Net's gradients match fp32's, and ``precision: auto`` resolves to a
concrete precision (bf16 only where the CPU has native bfloat16) before it reaches a run key."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import benchmarks.training as training
from benchmarks.config import load_profile
from benchmarks.training import resolve_precision
from methods.common.vnet import Conv3x3x3, VNet


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).abs().max() / b.abs().max())


def bf16_and_fp32_grads(module: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    grads = []
    for enabled in (True, False):
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = module(x)
        (out.float() ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    return grads[0], grads[1]


@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 4, 8), (2, 3, 1), (4, 4, 4)])
def test_conv3x3x3_weight_gradient_under_bf16_matches_fp32(shape: tuple[int, int, int]) -> None:
    """Depth 2 is where oneDNN's bf16 weight gradient of a padded 3x3x3 convolution goes wrong (errors
    of about 1 to inf with torch 2.14.1 on AVX-512 BF16); Conv3x3x3 runs such inputs in fp32."""
    torch.manual_seed(0)
    conv = Conv3x3x3(32, 32)
    bf16, fp32 = bf16_and_fp32_grads(conv, torch.randn(2, 32, *shape))
    for name in ("weight", "bias"):
        assert torch.isfinite(bf16[name]).all()
        assert relative_error(bf16[name], fp32[name]) < 0.03, name


def test_conv3x3x3_in_fp32_is_nn_conv3d() -> None:
    torch.manual_seed(0)
    ours, plain = Conv3x3x3(4, 8), nn.Conv3d(4, 8, 3, padding=1)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 4, 2, 6, 6)
    assert torch.equal(ours(x), plain(x))
    assert list(ours.state_dict()) == ["weight", "bias"]


def test_vnet_on_a_32_cube_learns_under_bf16_as_in_fp32() -> None:
    """The cpu profile's patch (a 2x2x2 bottleneck): every bf16 gradient is finite (the bottleneck's
    was NaN before Conv3x3x3), and 12 SGD steps on a learnable task end at fp32's loss, within 10 %."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32, 32)
    labels = (x[:, 0] > 0.5).long() + (x[:, 0] > 0.8).long()  # three classes, learnable voxel by voxel
    final = {}
    for precision in ("bf16", "fp32"):
        torch.manual_seed(0)
        net = VNet(1, 3, 4, "instance")
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for _ in range(12):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = nn.functional.cross_entropy(net(x).float(), labels)
            loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in net.parameters()), precision
            optimizer.step()
        final[precision] = loss.item()
    assert final["fp32"] < 0.9  # it learned something (cross-entropy of a uniform guess: ln 3 = 1.10)
    assert final["bf16"] == pytest.approx(final["fp32"], rel=0.1)


@pytest.mark.parametrize(("flags", "device", "expected"), [
    ({"avx512f", "avx512_bf16"}, "cpu", "bf16"), ({"amx_bf16"}, "cpu", "bf16"), ({"avx2", "fma"}, "cpu", "fp32"),
    (set(), "cpu", "fp32"), ({"avx512_bf16"}, "cuda", "fp32")])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, flags: set[str],
                                                                device: str, expected: str) -> None:
    monkeypatch.setattr(training, "cpu_flags", lambda: flags)
    assert resolve_precision("auto", device) == expected
    assert resolve_precision("fp32", device) == "fp32"


def test_profiles_hold_a_concrete_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` never reaches a run: the cpu profile (``precision: auto``) loads as bf16 or fp32 by CPU."""
    for flags, expected in (({"avx512_bf16"}, "bf16"), ({"avx2"}, "fp32")):
        monkeypatch.setattr(training, "cpu_flags", lambda flags=flags: flags)
        assert load_profile("cpu").precision == expected
    assert load_profile("smoke").precision == "fp32"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo (not Linux)")
def test_cpuinfo_values_read_one_value_per_cpu() -> None:
    """One ``processor`` entry per online CPU; ``cpu_flags`` are the first CPU's ``flags``, split."""
    processors = training.cpuinfo_values("processor")
    assert len(processors) == os.cpu_count() and all(p.isdigit() for p in processors)
    first = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    assert training.cpu_flags() == set(first.split(":", 1)[1].split())
    assert training.cpuinfo_values("no such key") == []
