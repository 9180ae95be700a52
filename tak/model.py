"""TAK's segmentation network: V-Net features, a text-driven dynamic head and contrastive projections
(docs/algorithms.md §4.1, ``VNet_Magic_CLIP_2p_Contrast``).

The head's parameters are not learned directly: for every sample and class, a controller maps
``[global image code ; class text code]`` to the weights of three 1x1x1 layers (8 -> 8 -> 8 -> 1) that
turn the 8-channel decoder feature into that class's logit.

Shapes for the reference (nf 16, 96^3 patch, 16 classes, 512-d text): encoder features x3, x4, x5 have
64, 128, 256 channels at 24^3, 12^3, 6^3; the text tensor is ``(2, C, text_dim)`` (row 0: one
description per class, row 1: the other); the head outputs ``(B, C, D, H, W)`` logits.

>>> net = TAKNetwork(VNet(1, 3, 4, "instance"), text=torch.randn(2, 3, 10), location_head=nn.Identity())
>>> net(torch.rand(2, 1, 32, 32, 32)).shape
torch.Size([2, 3, 32, 32, 32])
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from methods.common.vnet import VNet

HEAD_CHANNELS = 8  # width of the dynamic head's layers (reference: 8 -> 8 -> 8 -> 1)


def dynamic_head_param_count(channels: int = HEAD_CHANNELS) -> int:
    """Parameters per class of the dynamic head: weights ``c*c, c*c, c`` and biases ``c, c, 1`` (153)."""
    return 2 * channels * channels + channels + 2 * channels + 1


def _split(params: torch.Tensor, c: int) -> tuple[torch.Tensor, ...]:
    """``(B, C, 153)`` -> ``W1 (B, C c, c), B1 (B, C c, 1), W2 (B C, c, c), B2 (B C, c, 1), W3 (B C, 1, c),
    B3 (B C, 1, 1)`` (the reference's layout: weights of layers 1-3, then their biases)."""
    b, n, _ = params.shape
    w1, w2, w3, b1, b2, b3 = params.split([c * c, c * c, c, c, c, 1], dim=2)
    return (w1.reshape(b, n * c, c), b1.reshape(b, n * c, 1), w2.reshape(b * n, c, c), b2.reshape(b * n, c, 1),
            w3.reshape(b * n, 1, c), b3.reshape(b * n, 1, 1))


def dynamic_head_unfused(h: torch.Tensor, params: torch.Tensor, channels: int = HEAD_CHANNELS) -> torch.Tensor:
    """:func:`dynamic_head` with plain autograd (batched matmuls over ``(B, C, c, V)`` intermediates)."""
    b, n, _ = params.shape
    w1, b1, w2, b2, w3, b3 = _split(params, channels)
    y = torch.baddbmm(b1, w1, h.flatten(2)).relu().view(b * n, channels, -1)
    y = torch.baddbmm(b2, w2, y).relu()
    return torch.baddbmm(b3, w3, y).view(b, n, *h.shape[2:])


def dynamic_head_block_diagonal(h: torch.Tensor, params: torch.Tensor, channels: int = HEAD_CHANNELS) -> torch.Tensor:
    """:func:`dynamic_head` as one product per sample and layer: layers 2 and 3 of all ``C`` classes
    as a block-diagonal ``(C c, C c)`` and ``(C, C c)`` matrix (plain autograd; the accelerator form).

    ``C`` times the multiply-adds of :func:`dynamic_head_unfused`, but three well-shaped products per
    sample instead of ``B C`` products of ``c x c`` matrices with ``V`` columns, for which cuBLAS picks
    kernels far below the memory bandwidth (H200, fp16, 96^3 patch: about 3.7 ms per product, 8x the
    bandwidth bound). The off-diagonal blocks are exact zeros, so the values are those of the
    per-class products up to summation order.
    """
    b, n, _ = params.shape
    c = channels
    w1, w2, w3, b1, b2, b3 = params.split([c * c, c * c, c, c, c, 1], dim=2)
    eye = torch.eye(n, dtype=params.dtype, device=params.device)
    w2 = (eye[None, :, None, :, None] * w2.reshape(b, n, c, 1, c)).reshape(b, n * c, n * c)
    w3 = (eye[None, :, :, None] * w3.reshape(b, n, 1, c)).reshape(b, n, n * c)
    y = torch.baddbmm(b1.reshape(b, n * c, 1), w1.reshape(b, n * c, c), h.flatten(2)).relu()
    y = torch.baddbmm(b2.reshape(b, n * c, 1), w2, y).relu()
    return torch.baddbmm(b3.reshape(b, n, 1), w3, y).view(b, n, *h.shape[2:])


class _ChunkedDynamicHead(torch.autograd.Function):
    """The dynamic head over chunks of voxels, without keeping intermediates.

    The unfused form materialises two ``(B, C, c, V)`` tensors (67 MB each at 4 x 16 classes x 32^3)
    and reads them again in backward: on a CPU it is memory-bound. Here the forward computes each
    chunk's three layers while they are in cache and keeps only the inputs; the backward recomputes
    a chunk's activations and accumulates the weight gradients. 3.2x faster forward + backward and
    13x faster forward alone on the 2-core machine (``tests/bench``), same values to float rounding.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # fp32 inside, also under autocast
    def forward(ctx: Any, h: torch.Tensor, params: torch.Tensor, channels: int) -> torch.Tensor:
        b, n, _ = params.shape
        w1, b1, w2, b2, w3, b3 = _split(params, channels)
        x = h.flatten(2)
        chunk = _chunk(b * n * channels)
        out = x.new_empty((b, n, x.shape[-1]))
        for s in range(0, x.shape[-1], chunk):
            y1 = torch.baddbmm(b1, w1, x[:, :, s:s + chunk]).relu_().view(b * n, channels, -1)
            y2 = torch.baddbmm(b2, w2, y1).relu_()
            out[:, :, s:s + chunk] = torch.baddbmm(b3, w3, y2).view(b, n, -1)
        ctx.save_for_backward(h, params)
        ctx.channels = channels
        return out.view(b, n, *h.shape[2:])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        h, params = ctx.saved_tensors
        c = ctx.channels
        b, n, _ = params.shape
        w1, b1, w2, b2, w3, _ = _split(params, c)
        x = h.flatten(2)
        g = grad.reshape(b * n, 1, -1)
        chunk = _chunk(b * n * c)
        gx = torch.empty_like(x)
        gw1, gw2, gw3 = torch.zeros_like(w1), torch.zeros_like(w2), torch.zeros_like(w3)
        gb1, gb2, gb3 = x.new_zeros((b, n * c)), x.new_zeros((b * n, c)), g.sum((1, 2))
        for s in range(0, x.shape[-1], chunk):
            xs = x[:, :, s:s + chunk]
            y1 = torch.baddbmm(b1, w1, xs).relu_().view(b * n, c, -1)
            y2 = torch.baddbmm(b2, w2, y1).relu_()
            g3 = g[:, :, s:s + chunk]
            gw3.baddbmm_(g3, y2.transpose(1, 2))
            d2 = torch.ops.aten.threshold_backward(torch.bmm(w3.transpose(1, 2), g3), y2, 0)
            gw2.baddbmm_(d2, y1.transpose(1, 2))
            gb2 += d2.sum(2)
            d1 = torch.ops.aten.threshold_backward(torch.bmm(w2.transpose(1, 2), d2), y1, 0).view(b, n * c, -1)
            gw1.baddbmm_(d1, xs.transpose(1, 2))
            gb1 += d1.sum(2)
            gx[:, :, s:s + chunk] = torch.bmm(w1.transpose(1, 2), d1)
        gparams = torch.cat([gw1.reshape(b, n, c * c), gw2.reshape(b, n, c * c), gw3.reshape(b, n, c),
                             gb1.reshape(b, n, c), gb2.reshape(b, n, c), gb3.reshape(b, n, 1)], dim=2)
        return gx.view_as(h), gparams, None


def _chunk(rows: int) -> int:
    """Voxels per chunk: about 1 MB per ``(rows, chunk)`` float32 activation (cache-resident)."""
    return max(128, min(8192, (1 << 18) // max(rows, 1)))


def dynamic_head(h: torch.Tensor, params: torch.Tensor, channels: int = HEAD_CHANNELS) -> torch.Tensor:
    """Apply per-sample, per-class 1x1x1 layers ``c -> c -> c -> 1`` (ReLU between).

    Args:
        h: head input ``(B, c, D, H, W)``.
        params: ``(B, C, 153)`` laid out as the reference: weights of layers 1-3, then their biases.
    Returns:
        logits ``(B, C, D, H, W)``.

    On the CPU the chunked kernel (:class:`_ChunkedDynamicHead`) runs; on an accelerator, where a
    loop over chunks would launch thousands of small kernels, the block-diagonal form
    (:func:`dynamic_head_block_diagonal`) does; on the meta device (FLOP counting) the per-class form.
    """
    if h.device.type == "cpu":
        return _ChunkedDynamicHead.apply(h, params, channels)
    if h.device.type == "meta":  # FLOP counting (Table 6): the per-class products, not the zero blocks
        return dynamic_head_unfused(h, params, channels)
    return dynamic_head_block_diagonal(h, params, channels)


class TextDrivenHead(nn.Module):
    """Text projections, global image code, controller and the dynamic head.

    Args:
        base_filters: the V-Net's ``nf`` (x3, x4, x5 have ``4 nf, 8 nf, 16 nf`` channels).
        text_dim: width of the text embeddings (384 MiniLM, 512 CLIP-family).
    """

    def __init__(self, base_filters: int, text_dim: int) -> None:
        super().__init__()
        nf = base_filters
        widths = [4 * nf, 8 * nf, 16 * nf]
        code = 16 * nf  # 256 in the reference
        self.text_proj = nn.ModuleList([nn.Sequential(nn.Linear(text_dim, w), nn.ReLU()) for w in widths])
        self.class_fuse = nn.Sequential(nn.Linear(2 * widths[-1], code), nn.ReLU())
        self.image_code = nn.ModuleList([nn.Sequential(nn.GroupNorm(16, w), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                                                       nn.Conv3d(w, code, 1)) for w in widths])
        self.controller = nn.Conv3d(2 * code, dynamic_head_param_count(), 1)
        self.head_input = nn.Sequential(nn.GroupNorm(min(16, nf), nf), nn.ReLU(), nn.Conv3d(nf, HEAD_CHANNELS, 1))

    def class_codes(self, text: torch.Tensor) -> torch.Tensor:
        """``(2, C, text_dim)`` -> ``(C, code)``: ``ReLU(Linear([T(E_0)_c ; T(E_1)_c]))``."""
        t = self.text_proj[-1](text)
        return self.class_fuse(torch.cat([t[0], t[1]], dim=-1))

    def forward(self, feats: list[torch.Tensor], x9: torch.Tensor, text: torch.Tensor,
                class_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C, D, H, W)`` from encoder features ``[x3, x4, x5]`` and decoder feature ``x9``."""
        image = torch.stack([g(f).flatten(1) for g, f in zip(self.image_code, feats)]).mean(0)  # (B, code)
        codes = self.class_codes(text) if class_codes is None else class_codes  # (C, code)
        b, n_cls = image.shape[0], codes.shape[0]
        joint = torch.cat([image[:, None].expand(b, n_cls, -1), codes[None].expand(b, n_cls, -1)], dim=-1)
        params = self.controller(joint.reshape(b * n_cls, -1, 1, 1, 1)).reshape(b, n_cls, -1)
        return dynamic_head(self.head_input(x9), params)


class ProjectionHead(nn.Sequential):
    """Contrastive projection: Conv1x1 -> InstanceNorm -> ReLU -> Conv1x1 (``k -> k``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv3d(channels, channels, 1), nn.InstanceNorm3d(channels), nn.ReLU(),
                         nn.Conv3d(channels, channels, 1))


class TAKNetwork(nn.Module):
    """V-Net backbone (its ``out_conv`` removed), text-driven head, projection heads on x3..x5, and the
    MagicNet location head. Same stage interface as ``methods.magicnet.MagicModel``.

    Args:
        backbone: the V-Net (nf 16, InstanceNorm in the reference).
        text: fixed text embeddings ``(2, C, text_dim)`` (a buffer, not a parameter).
        location_head: the cube-location classifier (bias-free first layer in TAK).
    """

    def __init__(self, backbone: VNet, text: torch.Tensor, location_head: nn.Module) -> None:
        super().__init__()
        backbone.out_conv = nn.Identity()  # TAK's decoder returns the nf-channel feature
        nf = backbone.decoder[-1][0].out_channels
        self.backbone, self.location_head = backbone, location_head
        self.register_buffer("text", text.to(torch.get_default_dtype()).clone())
        self.text_head = TextDrivenHead(nf, text.shape[-1])
        self.projections = nn.ModuleList([ProjectionHead(w) for w in (4 * nf, 8 * nf, 16 * nf)])

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.encode(x)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.backbone.decode(feats)

    def head(self, feats: list[torch.Tensor] | None, x9: torch.Tensor,
             class_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from ``[x3, x4, x5]`` (``feats``; the full encoder list is accepted) and ``x9``."""
        if feats is None:
            raise ValueError("TAK's head needs the encoder features x3..x5 for its global image code")
        return self.text_head(feats[-3:], x9, self.text, class_codes)

    def class_codes(self) -> torch.Tensor:
        return self.text_head.class_codes(self.text)

    def project(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Contrastive embeddings of ``[x3, x4, x5]`` (same shapes)."""
        return [p(f) for p, f in zip(self.projections, feats[-3:])]

    def text_anchors(self) -> list[torch.Tensor]:
        """Text embeddings at the x3, x4, x5 widths: ``(2 C, 4 nf)``, ``(2 C, 8 nf)``, ``(2 C, 16 nf)``."""
        flat = self.text.flatten(0, 1)
        return [proj(flat) for proj in self.text_head.text_proj]

    def inference_parts(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "text_head": self.text_head}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        return self.head(feats, self.decode(feats))
