"""Gaussian diffusion on one-hot labels with ``x_0`` prediction and deterministic DDIM sampling (A&D,
docs/algorithms.md §4.15; the reference uses guided-diffusion's ``SpacedDiffusion``).

Linear beta schedule ``1e-4 .. 0.02`` over ``T = 1000`` steps; ``q(x_t | x_0) = N(sqrt(abar_t) x_0,
(1 - abar_t) I)``. DDIM with ``eta = 0`` over ``S`` respaced steps ``round(i (T - 1) / (S - 1))``; the
model's ``x_0`` is clipped to ``[-1, 1]`` and the prediction of the last step (``t = 0``) is returned.

>>> schedule = LinearSchedule(1000)
>>> ddim_timesteps(1000, 10)
[0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
>>> x0 = torch.full((1, 2, 2, 2, 2), 0.5)
>>> torch.allclose(ddim_sample(lambda x, t: x0, (1, 2, 2, 2, 2), schedule, 10), x0)
True
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


class LinearSchedule:
    """``betas = linspace(1e-4, 0.02, T)`` (float64) and ``abar_t = prod_{s <= t} (1 - beta_s)``."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.num_steps = num_steps
        self.betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` for timesteps ``(B,)``, shaped ``(B, 1, 1, 1, 1)`` in ``like``'s dtype and device."""
        values = torch.from_numpy(self.alphas_cumprod[t.cpu().numpy()]).to(like.device, like.dtype)
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
        abar = self.abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def ddim_timesteps(num_steps: int, sample_steps: int) -> list[int]:
    """The respaced timesteps of guided-diffusion's ``space_timesteps(T, [S])`` (ascending)."""
    if sample_steps == 1:
        return [0]
    stride = (num_steps - 1) / (sample_steps - 1)
    return [round(i * stride) for i in range(sample_steps)]


@torch.no_grad()
def ddim_sample(predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
                schedule: LinearSchedule, sample_steps: int = 10, device: torch.device | str = "cpu",
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic DDIM (``eta = 0``) from ``x_T ~ N(0, I)``; returns the last predicted ``x_0`` ``shape``.

    ``predict_x0(x_t, t)`` gets ``x_t`` ``shape`` and the original timestep ``t`` ``(B,)`` (int64).
    Each step: ``x0 = clip(predict_x0(x_t, t), -1, 1)``, ``eps = (x_t / sqrt(abar_t) - x0) /
    sqrt(1 / abar_t - 1)``, ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps`` (``abar_prev`` of
    the previous respaced step, 1 before the first).
    """
    steps = ddim_timesteps(schedule.num_steps, sample_steps)
    x = torch.randn(shape, device=device) if noise is None else noise
    x0 = x
    for i in reversed(range(len(steps))):
        t = torch.full((shape[0],), steps[i], dtype=torch.long, device=x.device)
        x0 = predict_x0(x, t).clamp(-1, 1)
        abar = float(schedule.alphas_cumprod[steps[i]])
        abar_prev = float(schedule.alphas_cumprod[steps[i - 1]]) if i > 0 else 1.0
        eps = (x / abar ** 0.5 - x0) / (1 / abar - 1) ** 0.5
        x = abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * eps
    return x0
