"""A&D's DiffVNet (GenericSSL, docs/algorithms.md §4.15): one time-conditioned V-Net encoder, three decoders.

The encoder is shared by two stems: the *denoising* stem sees ``cat(image, x_t)`` (``1 + C`` channels)
and a timestep embedding; the *image* stem sees the image alone (no time embedding). Three decoders
read the encoder's features: ``xi`` (denoising, time-conditioned, predicts ``x_0``), ``psi`` (the
difficulty-weighted supervised decoder) and ``theta`` (trained on pseudo-labels, used at test time).

As the reference, a convolution unit is Conv3d 3x3x3 -> ReLU -> Norm -> Dropout3d(0.1) and adds
``Linear(SiLU(temb))`` per channel when time-conditioned (every unit of a stage but its last, every
down/up-sampling block); the timestep embedding is sinusoidal (128) -> Linear 512 -> SiLU -> Linear 512.
Dropout (0.1 in every unit, 0.5 on the bottleneck and the last decoder feature) follows the config's
``dropout`` flag.

>>> net = DiffVNet(1, 4, base_filters=4, norm="batch", dropout=False)
>>> net(torch.zeros(2, 1, 16, 16, 16)).shape
torch.Size([2, 4, 16, 16, 16])
>>> net.denoise(torch.zeros(2, 4, 16, 16, 16), torch.tensor([0, 999]), torch.zeros(2, 1, 16, 16, 16)).shape
torch.Size([2, 4, 16, 16, 16])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.vnet import Conv3x3x3, Norm, norm_layer

TIME_EMBED_IN, TIME_EMBED_OUT = 128, 512


def timestep_embedding(timesteps: torch.Tensor, dim: int = TIME_EMBED_IN) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of integer timesteps ``(B,)``: ``[sin(t f_k), cos(t f_k)]`` with
    ``f_k = exp(-k ln(10000) / (dim/2 - 1))`` (the DDPM/fairseq convention of the reference)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.get_default_dtype(), device=timesteps.device) * -(math.log(10000) / (half - 1)))
    angles = timesteps.to(freqs.dtype)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeFusion(nn.Module):
    """Adds ``Linear(SiLU(temb))`` to every voxel of a feature map (nothing when ``temb`` is None)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(TIME_EMBED_OUT, channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        return x if temb is None else x + self.proj(F.silu(temb))[:, :, None, None, None]


class Unit(nn.Module):
    """One block: ``op`` (conv 3x3x3, or a stride-2 (transposed) conv) -> ReLU -> Norm [-> Dropout3d(0.1)]
    [+ time fusion]."""

    def __init__(self, op: nn.Module, channels: int, norm: Norm, dropout: float, timed: bool) -> None:
        super().__init__()
        self.op, self.norm = op, norm_layer(norm, channels)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.time = TimeFusion(channels) if timed else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        x = self.dropout(self.norm(F.relu(self.op(x))))
        return x if self.time is None else self.time(x, temb)


def stage(n_units: int, in_ch: int, out_ch: int, norm: Norm, dropout: float, timed: bool) -> nn.ModuleList:
    """``n_units`` 3x3x3 units; time fusion on every unit but the last (as the reference)."""
    return nn.ModuleList([Unit(Conv3x3x3(in_ch if i == 0 else out_ch, out_ch), out_ch, norm, dropout,
                               timed and i < n_units - 1) for i in range(n_units)])


def run(units: nn.ModuleList, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    for unit in units:
        x = unit(x, temb)
    return x


class Encoder(nn.Module):
    """Stages 2-5 of the V-Net (``[2, 3, 3, 3]`` units) with stride-2 downsampling between them; the
    first stage is the stem. Returns ``[x1 .. x5]``."""

    def __init__(self, nf: int, norm: Norm, dropout: bool) -> None:
        super().__init__()
        widths, p = [nf, 2 * nf, 4 * nf, 8 * nf, 16 * nf], 0.1 if dropout else 0.0
        self.down = nn.ModuleList([Unit(nn.Conv3d(widths[i], widths[i + 1], 2, stride=2), widths[i + 1], norm, 0.0, True)
                                   for i in range(4)])
        self.stages = nn.ModuleList([stage(n, widths[i + 1], widths[i + 1], norm, p, True)
                                     for i, n in enumerate([2, 3, 3, 3])])
        self.bottleneck_dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()

    def forward(self, x1: torch.Tensor, temb: torch.Tensor | None) -> list[torch.Tensor]:
        feats = [x1]
        for down, units in zip(self.down, self.stages):
            feats.append(run(units, down(feats[-1], temb), temb))
        feats[-1] = self.bottleneck_dropout(feats[-1])
        return feats


class Decoder(nn.Module):
    """The V-Net decoder (``[3, 3, 2, 1]`` units, additive skips, 1x1x1 output conv); ``timed`` adds
    the time fusions of the denoising decoder. Parameter names match between timed and plain decoders
    (the aggregation step averages them by name)."""

    def __init__(self, nf: int, num_classes: int, norm: Norm, dropout: bool, timed: bool) -> None:
        super().__init__()
        widths, p = [nf, 2 * nf, 4 * nf, 8 * nf, 16 * nf], 0.1 if dropout else 0.0
        self.up = nn.ModuleList([Unit(nn.ConvTranspose3d(widths[4 - i], widths[3 - i], 2, stride=2), widths[3 - i], norm,
                                      0.0, timed) for i in range(4)])
        self.stages = nn.ModuleList([stage(n, widths[3 - i], widths[3 - i], norm, p, timed)
                                     for i, n in enumerate([3, 3, 2, 1])])
        self.last_dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()
        self.out_conv = nn.Conv3d(nf, num_classes, 1)

    def forward(self, feats: list[torch.Tensor], temb: torch.Tensor | None = None) -> torch.Tensor:
        x = feats[-1]
        for i, (up, units) in enumerate(zip(self.up, self.stages)):
            x = run(units, up(x, temb) + feats[3 - i], temb)
        return self.out_conv(self.last_dropout(x))


class ImagePath(nn.Module):
    """Image stem -> encoder -> one plain decoder: the modules one segmentation forward runs (shared
    with the :class:`DiffVNet` they come from)."""

    def __init__(self, stem: nn.ModuleList, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.stem, self.encoder, self.decoder = stem, encoder, decoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(run(self.stem, image, None), None))


class DiffVNet(nn.Module):
    """Shared encoder, two stems, decoders ``xi`` (denoising), ``psi`` and ``theta``.

    ``forward(image)`` is the test-time path: image stem -> encoder -> ``theta``, logits ``(B, C, D, H, W)``.
    """

    def __init__(self, in_channels: int, num_classes: int, base_filters: int = 32, norm: Norm = "batch",
                 dropout: bool = True) -> None:
        super().__init__()
        nf, p = base_filters, 0.1 if dropout else 0.0
        self.time_mlp = nn.Sequential(nn.Linear(TIME_EMBED_IN, TIME_EMBED_OUT), nn.SiLU(),
                                      nn.Linear(TIME_EMBED_OUT, TIME_EMBED_OUT))
        self.stem_denoise = stage(1, in_channels + num_classes, nf, norm, p, True)
        self.stem_image = stage(1, in_channels, nf, norm, p, False)
        self.encoder = Encoder(nf, norm, dropout)
        self.decoder_xi = Decoder(nf, num_classes, norm, dropout, timed=True)
        self.decoder_psi = Decoder(nf, num_classes, norm, dropout, timed=False)
        self.decoder_theta = Decoder(nf, num_classes, norm, dropout, timed=False)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of the image alone (no time embedding)."""
        return self.encoder(run(self.stem_image, image, None), None)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``D_xi``: the predicted ``x_0`` ``(B, C, ...)`` from the noisy one-hot ``x_t``, timesteps ``t`` ``(B,)``
        and the image."""
        temb = self.time_mlp(timestep_embedding(t))
        x1 = run(self.stem_denoise, torch.cat([image, x_t], dim=1), temb)
        return self.decoder_xi(self.encoder(x1, temb), temb)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder_theta(self.features(image))

    def test_path(self) -> ImagePath:
        """The modules of :meth:`forward` (image stem, encoder, ``theta``), for parameter counts."""
        return ImagePath(self.stem_image, self.encoder, self.decoder_theta)

    @torch.no_grad()
    def aggregate(self, momentum: float = 0.99) -> None:
        """A&D's aggregating step: every ``theta`` parameter with a same-named, same-shaped parameter in
        ``xi`` and ``psi`` becomes ``m theta + (1 - m) (xi + psi) / 2`` (buffers are left alone)."""
        xi, psi = dict(self.decoder_xi.named_parameters()), dict(self.decoder_psi.named_parameters())
        for name, theta in self.decoder_theta.named_parameters():
            if name in xi and xi[name].shape == theta.shape:
                theta.mul_(momentum).add_((xi[name] + psi[name]) / 2, alpha=1 - momentum)
