"""TAK's segmentation network: V-Net features, a text-driven dynamic head and contrastive projections
(spec 4.1, ``VNet_Magic_CLIP_2p_Contrast``).

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

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.vnet import VNet

HEAD_CHANNELS = 8  # width of the dynamic head's layers (reference: 8 -> 8 -> 8 -> 1)


def dynamic_head_param_count(channels: int = HEAD_CHANNELS) -> int:
    """Parameters per class of the dynamic head: weights ``c*c, c*c, c`` and biases ``c, c, 1`` (153)."""
    return 2 * channels * channels + channels + 2 * channels + 1


def dynamic_head(h: torch.Tensor, params: torch.Tensor, channels: int = HEAD_CHANNELS) -> torch.Tensor:
    """Apply per-sample, per-class 1x1x1 layers ``c -> c -> c -> 1`` (ReLU between).

    Args:
        h: head input ``(B, c, D, H, W)``.
        params: ``(B, C, 153)`` laid out as the reference: weights of layers 1-3, then their biases.
    Returns:
        logits ``(B, C, D, H, W)``.
    """
    b, n_cls, _ = params.shape
    c = channels
    w1, w2, w3, b1, b2, b3 = params.split([c * c, c * c, c, c, c, 1], dim=2)
    flat = h.flatten(2)  # (B, c, V)
    y = torch.einsum("bkoi,biv->bkov", w1.reshape(b, n_cls, c, c), flat) + b1.unsqueeze(-1)
    y = torch.einsum("bkoi,bkiv->bkov", w2.reshape(b, n_cls, c, c), y.relu()) + b2.unsqueeze(-1)
    y = torch.einsum("bkoi,bkiv->bkov", w3.reshape(b, n_cls, 1, c), y.relu()) + b3.unsqueeze(-1)
    return y.reshape(b, n_cls, *h.shape[2:])


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
        self.register_buffer("text", text.float().clone())
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
