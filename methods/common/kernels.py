"""Faster CPU forms of two operations every method runs each step.

- :func:`conv3d` (stride 1, used by every 3x3x3 convolution of the V-Nets): on the AVX2 kind of CPU,
  oneDNN's weight gradient of a 3D convolution takes 3-10x the time of the forward pass (torch 2.14.1,
  2 threads: 77 ms against 19 ms for 16 -> 16 channels on 4 crops of 32^3). The same gradient is a
  convolution of the input with the output gradient, batch and channel axes swapped, which oneDNN's
  forward kernel computes 2-7x faster; a whole train step is 1.0-1.8x faster (1.28x over the 18
  methods). The input and bias gradients are torch's. The weight gradient sums its ``B * D * H * W``
  terms in another order: against float64 its relative error is about 6e-6 instead of 5e-7
  (``tests/test_kernels.py``), far below what one SGD step changes, but not bit-identical, so
  :func:`kernels_version` enters the run key.
- :func:`class_argmax`: ``torch.max(x, dim).indices``, identical to ``x.argmax(dim)`` (first maximum,
  NaN wins; tested), 4-5x faster over the class axis of ``(B, C, D, H, W)`` on the CPU.

Where the faster form applies: CPU, float32, autograd recording, and a CPU whose kind was measured
(:data:`FAST_WEIGHT_GRAD_CAPABILITIES`); elsewhere (GPU, bf16 autocast, inference, AVX-512, which has not
been measured) ``torch.nn.functional.conv3d`` as is.

>>> x, w = torch.randn(2, 3, 6, 6, 6, requires_grad=True), torch.randn(4, 3, 3, 3, 3, requires_grad=True)
>>> conv3d(x, w, None, padding=1, fast_weight_grad=True).sum().backward()
>>> ours = w.grad.clone(); w.grad = None
>>> torch.nn.functional.conv3d(x, w, None, padding=1).sum().backward()
>>> torch.allclose(ours, w.grad, rtol=1e-4, atol=1e-4)
True
>>> class_argmax(torch.tensor([[[1.0], [3.0], [3.0]]]))
tensor([[1]])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# CPU kinds (``torch.backends.cpu.get_cpu_capability()``) on which the weight gradient as a convolution
# was measured faster than torch's (README "Measured").
FAST_WEIGHT_GRAD_CAPABILITIES = frozenset({"AVX2"})


def kernels_version(device: str) -> str:
    """Behaviour version of the kernels a run on ``device`` ("cpu", "cuda", ...) uses here: "1" for torch's
    own everywhere, "2" where the fp32 weight gradient is a convolution (a CPU of a measured kind). Part of
    the run key when not "1", so runs trained before the change are not reused on such a CPU."""
    if device == "cpu" and torch.backends.cpu.get_cpu_capability() in FAST_WEIGHT_GRAD_CAPABILITIES:
        return "2"
    return "1"


def run_key_versions(device: str) -> dict[str, str]:
    """The kernels' entry in a run's behaviour versions on ``device``: ``{"kernels": v}`` where
    :func:`kernels_version` is not torch's own ("1"), else empty, so runs with torch's kernels (GPU,
    unmeasured CPU kinds) keep the keys they had before the kernels existed.

    >>> run_key_versions("cuda")
    {}
    """
    version = kernels_version(device)
    return {} if version == "1" else {"kernels": version}


def fast_weight_grad_applies(x: torch.Tensor) -> bool:
    """Whether :func:`conv3d` computes the weight gradient of ``x``'s convolution as a convolution."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.cpu.get_cpu_capability() in FAST_WEIGHT_GRAD_CAPABILITIES)


class _Conv3dWeightGradAsConv(torch.autograd.Function):
    """Stride-1 3D convolution whose weight gradient is ``conv3d(x^T, grad^T)^T`` (``^T``: axes 0 and 1
    swapped): ``dW[o, i, k] = sum_{b, v} grad[b, o, v] * x_padded[b, i, v + k]`` is a correlation of
    ``x`` (channels as the batch, the batch as channels) with ``grad`` as the filter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv3d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        pad = ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1, 1], [pad] * 3, [1, 1, 1],
                                                         False, [0, 0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = F.conv3d(x.transpose(0, 1), grad.transpose(0, 1), padding=pad).transpose(0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
           fast_weight_grad: bool | None = None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=padding)`` (stride 1, no dilation, one group), ``x`` of shape
    ``(B, C_in, D, H, W)``, ``weight`` ``(C_out, C_in, k, k, k)``. ``fast_weight_grad``: compute the weight
    gradient as a convolution (None: where :func:`fast_weight_grad_applies`)."""
    if fast_weight_grad is None:
        fast_weight_grad = fast_weight_grad_applies(x)
    if fast_weight_grad and (x.requires_grad or weight.requires_grad):
        return _Conv3dWeightGradAsConv.apply(x, weight, bias, padding)
    return F.conv3d(x, weight, bias, padding=padding)


def class_argmax(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index of the largest score along ``dim`` (the class axis of ``(B, C, D, H, W)`` by default), as
    ``scores.argmax(dim)``: the first maximum, NaN counting as the maximum."""
    return scores.max(dim).indices
