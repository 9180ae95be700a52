"""The faster CPU kernels (methods/common/kernels.py) compute what torch computes: the convolution's
gradients against float64, a V-Net's training against torch's backward, argmax ties and NaN."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods.common.kernels import class_argmax, conv3d, fast_weight_grad_applies
from methods.common.vnet import VNet


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("batch, c_in, c_out, size, kernel, input_grad", [
    (2, 1, 8, 16, 3, False),   # the first layer: the image needs no gradient
    (4, 16, 16, 8, 3, True),
    (2, 32, 32, 2, 3, True),   # the bottleneck of a 32^3 patch
    (2, 8, 5, 6, 1, True),     # a 1x1x1 output convolution
])
def test_conv3d_gradients_match_float64(batch: int, c_in: int, c_out: int, size: int, kernel: int,
                                        input_grad: bool) -> None:
    torch.manual_seed(0)
    x64 = torch.randn(batch, c_in, size, size, size, dtype=torch.float64, requires_grad=input_grad)
    w64 = (torch.randn(c_out, c_in, kernel, kernel, kernel, dtype=torch.float64) * 0.2).requires_grad_()
    b64 = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(batch, c_out, size, size, size, dtype=torch.float64)
    pad = kernel // 2
    F.conv3d(x64, w64, b64, padding=pad).backward(grad_out)

    x, w, b = (t.detach().float().requires_grad_(t.requires_grad) for t in (x64, w64, b64))
    out = conv3d(x, w, b, padding=pad, fast_weight_grad=True)
    assert out.grad_fn is not None and "WeightGradAsConv" in type(out.grad_fn).__name__
    assert torch.allclose(out.double(), F.conv3d(x64, w64, b64, padding=pad), rtol=1e-5, atol=1e-5)
    out.backward(grad_out.float())
    assert w.grad.shape == w64.shape and w.grad.is_contiguous()
    assert _relative_error(w.grad, w64.grad) < 1e-5
    assert _relative_error(b.grad, b64.grad) < 1e-5
    if input_grad:
        assert _relative_error(x.grad, x64.grad) < 1e-5
    else:
        assert x.grad is None


def test_the_fast_path_is_taken_only_when_recording_fp32_on_a_measured_cpu() -> None:
    x = torch.randn(1, 2, 4, 4, 4)
    measured = torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert fast_weight_grad_applies(x) is measured
    with torch.no_grad():
        assert not fast_weight_grad_applies(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast_weight_grad_applies(x)
    assert not fast_weight_grad_applies(x.double())
    w = torch.randn(3, 2, 3, 3, 3, requires_grad=True)
    assert conv3d(x, w, None, padding=1, fast_weight_grad=False).grad_fn.name() == "ConvolutionBackward0"
    with torch.no_grad():  # nothing to differentiate: torch's convolution
        assert conv3d(x, w, None, padding=1, fast_weight_grad=True).grad_fn is None


def test_a_vnet_trains_as_with_torchs_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten SGD steps of a V-Net (BatchNorm, as the DHC family) on fixed crops, against the same training
    in float64: with the weight gradient as a convolution the fp32 losses stay as close to float64's as
    with torch's backward (both drift by a few 1e-3 over ten steps: fp32 rounding grows along a
    trajectory; a wrong gradient moves the losses by tenths)."""
    from methods.common import kernels, vnet

    def train(fast: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        monkeypatch.setattr(vnet, "conv3d", lambda x, w, b, padding: kernels.conv3d(x, w, b, padding, fast))
        torch.manual_seed(0)
        net = VNet(1, 4, 4, "batch", False).to(dtype)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        x, y = torch.rand(2, 1, 16, 16, 16, generator=g), torch.randint(0, 4, (2, 16, 16, 16), generator=g)
        losses = []
        for _ in range(10):
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x.to(dtype)), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return torch.tensor(losses, dtype=torch.float64)

    reference = train(False, torch.float64)
    fast, torch_backward = train(True), train(False)
    assert fast[-1] < fast[0] - 0.05
    drift = float((torch_backward - reference).abs().max())
    assert float((fast - reference).abs().max()) <= 2 * drift + 1e-4


def test_class_argmax_is_argmax_with_ties_and_nan() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(12):
        scores = torch.randint(0, 3, (2, 6, 5, 4, 3), generator=g).float()  # many ties
        if trial % 3 == 0:
            scores[torch.rand(scores.shape, generator=g) < 0.05] = float("nan")
        assert torch.equal(class_argmax(scores), scores.argmax(1))
        assert torch.equal(class_argmax(scores.transpose(2, 3)), scores.transpose(2, 3).argmax(1))
        assert torch.equal(class_argmax(scores, dim=0), scores.argmax(0))


def test_the_kernels_version_enters_the_run_key_where_it_is_not_torchs(tiny_cohort, monkeypatch) -> None:
    """A CPU run whose weight gradients are convolutions has other keys than one with torch's kernels
    (a GPU run, or a CPU of an unmeasured kind, keeps the keys it had before the kernels)."""
    import dataclasses

    from benchmarks.config import load_profile, load_study
    from benchmarks.plan import StudyPlan
    from methods.common import kernels

    assert kernels.kernels_version("cuda") == "1" and kernels.kernels_version("cuda:0") == "1"
    smoke = load_profile("smoke")

    def cell(capabilities: frozenset[str], device: str = "cpu"):
        monkeypatch.setattr(kernels, "FAST_WEIGHT_GRAD_CAPABILITIES", capabilities)
        profile = dataclasses.replace(smoke, device=device)
        plan = StudyPlan(load_study("table2"), profile, methods=["dhc"], data_dir=tiny_cohort, progress=False)
        return plan.cells()[0]

    this_cpu = frozenset({torch.backends.cpu.get_cpu_capability()})
    fast, plain = cell(this_cpu), cell(frozenset())
    assert fast.versions["kernels"] == "2" and "kernels" not in plain.versions
    assert fast.run_key != plain.run_key
    assert "kernels" not in cell(this_cpu, "cuda").versions


def test_a_methods_accelerator_version_enters_gpu_run_keys_only(tiny_cohort) -> None:
    """TAK's accelerator forms (version 2) change its GPU run keys, not its CPU ones, nor another
    method's GPU keys."""
    import dataclasses

    from benchmarks.config import load_profile, load_study
    from benchmarks.plan import StudyPlan

    smoke = load_profile("smoke")

    def versions(device: str) -> dict[str, dict[str, str]]:
        plan = StudyPlan(load_study("table2"), dataclasses.replace(smoke, device=device), methods=["tak", "ga"],
                         data_dir=tiny_cohort, progress=False)
        return {c.method: c.versions for c in plan.cells()}

    gpu, cpu = versions("cuda"), versions("cpu")
    assert gpu["tak"]["method_accelerator"] == "2" and "method_accelerator" not in gpu["ga"]
    assert "method_accelerator" not in cpu["tak"]
