"""Teacher input noise and Monte-Carlo uncertainty (UA-MT, docs/algorithms.md §4.6; the DeSCO port)."""
from __future__ import annotations

from typing import Callable

import torch


def clipped_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """``x + clip(N(0, std^2), -clip, clip)`` (the UA-MT/Mean Teacher teacher input)."""
    return x + torch.randn_like(x).mul_(std).clamp_(-clip, clip)


@torch.no_grad()
def mc_entropy(net: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, num_classes: int, passes: int = 8,
               noise_std: float = 0.1, noise_clip: float = 0.2) -> torch.Tensor:
    """Entropy ``(B, D, H, W)`` (nats) of the mean softmax over ``passes`` forwards of ``net`` on noisy
    copies of ``image`` ``(B, 1, D, H, W)`` (dropout active if ``net`` is in train mode).

    As the UA-MT reference, an even number of passes runs as ``passes / 2`` forwards of the batch
    duplicated; ``-sum_c p_c log(p_c + 1e-6)``.
    """
    repeats = 2 if passes % 2 == 0 else 1
    stacked = image.repeat(repeats, 1, 1, 1, 1)
    probs = torch.zeros((image.shape[0], num_classes, *image.shape[2:]), device=image.device)
    for _ in range(passes // repeats):
        out = net(clipped_noise(stacked, noise_std, noise_clip)).softmax(1)
        probs += out.reshape(repeats, *probs.shape).sum(0)
    probs /= passes
    return -(probs * torch.log(probs + 1e-6)).sum(1)
