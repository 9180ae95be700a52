"""Pieces shared by MagicNet, GA and TAK (docs/algorithms.md §4.1-4.3): the cube-location head, the class
distribution logger of the cube-wise pseudo-label blending, and the magic-cube config fields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import MethodConfig


@dataclass
class MagicCubeConfig(MethodConfig):
    """MagicNet-family defaults (docs/algorithms.md §4.2): V-Net nf 16, InstanceNorm, no dropout; SGD lr 0.01,
    momentum 0.9, weight decay 1e-4, no Nesterov; poly decay."""

    base_filters: int = 16
    norm: str = "instance"
    dropout: bool = False
    lr: float = 0.01
    nesterov: bool = False
    weight_decay: float = 1e-4
    cube_grid: tuple[int, int, int] = (3, 3, 3)
    """Cubes per axis (reference: 3 x 3 x 3 cubes of 32^3 in a 96^3 patch). Every cube dimension must be
    divisible by 16 and one must be at least 32 (InstanceNorm needs more than one bottleneck voxel)."""
    consistency: float = 0.1
    """Maximum weight of the cross-image consistency term."""
    reference_ramp: bool = False
    """True: ``rampup(iter // 350, 200)``, MagicNet's BTCV ramp (on GA's 17k iterations it never exceeds
    0.0056, docs/algorithms.md §1.4); False (default): the ramp spans the run's budget, as for every other method."""
    location_weight: float = 0.1
    location_hidden: int = 4096
    ema_decay: float = 0.99
    noise_std: float = 0.1
    noise_clip: float = 0.2
    blend_start_fraction: float = 100 / 33_000
    """Cube-wise pseudo-label blending runs when ``step > blend_start_fraction * budget``: the references'
    100 iterations as a share of the paper profile's 33,000, so that every profile blends over the same
    share of its budget (an absolute 100 never blended under the 12- and 60-iteration profiles)."""
    dist_window: int = 20
    """The class-distribution logger replaces its counts every ``dist_window`` iterations."""
    dist_temperature: float = 1.0
    """``T_dist`` (undeclared in TAK's reference; MagicNet/GA default 1.0)."""
    cube_unmix_transposed: bool = False
    """True reproduces the reference's x/z-swapped cube re-assembly (docs/algorithms.md §7.1); False is exact."""
    poly_horizon: int | None = None
    """Iterations over which poly LR decays; None: the run's budget. 70000 reproduces the GA/TAK
    reference, whose denominator exceeds its run length (docs/algorithms.md §7.5)."""


class LocationHead(nn.Sequential):
    """Cube-location classifier on a cube's flattened bottleneck: Linear -> BN1d -> LeakyReLU(0.2) ->
    Linear to the number of cube positions (reference: 2048 -> 4096 -> 27)."""

    def __init__(self, in_features: int, positions: int, hidden: int = 4096, bias: bool = True) -> None:
        super().__init__(nn.Linear(in_features, hidden, bias=bias), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, positions))


class ClassDistributionLogger:
    """MagicNet's ``OrganClassLogger``: voxel counts of the unlabeled pseudo-labels, accumulated and
    published every ``window`` iterations (a sliding window, no momentum)."""

    def __init__(self, num_classes: int, window: int = 20) -> None:
        self.num_classes, self.window = num_classes, window
        self.counts = torch.zeros(num_classes, dtype=torch.float64)
        self.distribution: torch.Tensor | None = None

    def update(self, pseudo_labels: torch.Tensor, step: int) -> None:
        self.counts += torch.bincount(pseudo_labels.flatten().cpu(), minlength=self.num_classes).double()
        if (step + 1) % self.window == 0:
            self.distribution, self.counts = self.counts.clone(), torch.zeros_like(self.counts)

    def class_weights(self, temperature: float = 1.0) -> torch.Tensor | None:
        """``d^(1/T)`` normalised to sum 1, then divided by its maximum (``(C,)``, in [0, 1]); None
        until the first window is complete."""
        if self.distribution is None:
            return None
        d = self.distribution ** (1.0 / temperature)
        d = d / d.sum().clamp_min(1e-12)
        return (d / d.max().clamp_min(1e-12)).float()

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts.clone(), "distribution": self.distribution}

    def load(self, state: dict[str, Any]) -> None:
        self.counts, self.distribution = state["counts"].clone(), state["distribution"]
