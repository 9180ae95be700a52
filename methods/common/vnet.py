"""The simplified V-Net shared by the DHC, MagicNet, GA and TAK code bases (docs/algorithms.md §1.1).

Not Milletari's original: 3x3x3 convolutions, Norm + ReLU, additive skips. Channels ``nf * [1, 2, 4,
8, 16]`` over five encoder stages with ``[1, 2, 3, 3, 3]`` convolutions; the decoder mirrors it with
``[3, 3, 2, 1]``. The input's spatial dims must be divisible by 16 (four stride-2 downsamplings).

>>> net = VNet(in_channels=1, num_classes=16, base_filters=16, norm="instance")
>>> round(count_parameters(net) / 1e6, 2)
9.44
>>> net(torch.zeros(1, 1, 32, 32, 32)).shape
torch.Size([1, 16, 32, 32, 32])
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from methods.common.kernels import conv3d

Norm = Literal["batch", "instance", "group", "none"]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """The normalisation used after every convolution (InstanceNorm: affine=False, as the reference)."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=False, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(16 if channels % 16 == 0 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: expected batch, instance, group or none")


class Conv3x3x3(nn.Conv3d):
    """``nn.Conv3d(in_ch, out_ch, 3, padding=1)`` that runs in fp32 under CPU bfloat16 autocast when the
    input has a spatial extent of 2 or less.

    oneDNN's bfloat16 weight gradient of this convolution is wrong when the depth is 2 (torch 2.14.1 on
    a CPU with AVX-512 BF16: relative errors from about 1 to inf, so NaN within a step, while the
    forward pass and the input gradient are right; ``tests/test_precision.py``). The V-Net's
    bottleneck on a 32^3 patch is 2x2x2; such layers cost almost nothing in fp32. Parameters and state
    are those of ``nn.Conv3d``; in fp32 on the CPU its weight gradient is computed as a convolution
    (``methods.common.kernels.conv3d``: faster, the same to about 1e-5).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and min(x.shape[2:]) <= 2 and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                return conv3d(x.float(), self.weight, self.bias, padding=1)
        return conv3d(x, self.weight, self.bias, padding=1)


class ConvStage(nn.Sequential):
    """``n_convs`` x (Conv3d 3x3x3 -> Norm -> ReLU)."""

    def __init__(self, n_convs: int, in_ch: int, out_ch: int, norm: Norm) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [Conv3x3x3(in_ch if i == 0 else out_ch, out_ch), norm_layer(norm, out_ch),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Down(nn.Sequential):
    """Conv3d kernel 2 stride 2 -> Norm -> ReLU (halves every spatial dim)."""

    def __init__(self, in_ch: int, out_ch: int, norm: Norm) -> None:
        super().__init__(nn.Conv3d(in_ch, out_ch, 2, stride=2), norm_layer(norm, out_ch), nn.ReLU(inplace=True))


class Up(nn.Sequential):
    """ConvTranspose3d kernel 2 stride 2 -> Norm -> ReLU (doubles every spatial dim)."""

    def __init__(self, in_ch: int, out_ch: int, norm: Norm) -> None:
        super().__init__(nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2), norm_layer(norm, out_ch),
                         nn.ReLU(inplace=True))


class VNet(nn.Module):
    """Encoder-decoder V-Net returning logits ``(B, num_classes, D, H, W)`` for input ``(B, C_in, D, H, W)``.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output classes including background.
        base_filters: ``nf``; 16 for MagicNet/GA/TAK, 32 for the DHC family.
        norm: ``batch`` (DHC family), ``instance`` (MagicNet/TAK), ``group`` or ``none``.
        dropout: Dropout3d(0.5) on the bottleneck and the last decoder feature (DHC trains with it).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 16, base_filters: int = 16,
                 norm: Norm = "batch", dropout: bool = False) -> None:
        super().__init__()
        nf = base_filters
        widths = [nf, 2 * nf, 4 * nf, 8 * nf, 16 * nf]
        self.encoder = nn.ModuleList([ConvStage(n, c_in, c, norm) for n, c_in, c in
                                      zip([1, 2, 3, 3, 3], [in_channels] + widths[1:], widths)])
        self.down = nn.ModuleList([Down(widths[i], widths[i + 1], norm) for i in range(4)])
        self.up = nn.ModuleList([Up(widths[4 - i], widths[3 - i], norm) for i in range(4)])
        self.decoder = nn.ModuleList([ConvStage(n, widths[3 - i], widths[3 - i], norm)
                                      for i, n in enumerate([3, 3, 2, 1])])
        self.dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()
        self.out_conv = nn.Conv3d(nf, num_classes, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features ``[x1 .. x5]`` at strides 1, 2, 4, 8, 16."""
        feats = [self.encoder[0](x)]
        for stage, down in zip(self.encoder[1:], self.down):
            feats.append(stage(down(feats[-1])))
        feats[-1] = self.dropout(feats[-1])
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder feature ``x9`` (``nf`` channels, full resolution) from encoder features."""
        x = feats[-1]
        for i, (up, stage) in enumerate(zip(self.up, self.decoder)):
            x = stage(up(x) + feats[3 - i])
        return self.dropout(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.decode(self.encode(x)))


def count_parameters(*modules: nn.Module) -> int:
    """Number of parameters over ``modules`` (shared parameters counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())
