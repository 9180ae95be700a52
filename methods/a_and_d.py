"""``and``: A&D, Aggregating & Decoupling diffusion (Wang & Li, NeurIPS 2023; GenericSSL; docs/algorithms.md §4.15).

One shared V-Net encoder and three decoders (:class:`~methods.common.diff_vnet.DiffVNet`):
``D_xi`` denoises a noisy one-hot label (``x_0`` prediction, 1000-step linear schedule) conditioned on
the image; ``D_psi`` is trained on the labeled crops with difficulty-aware class weights computed
from ``D_xi``'s labeled output (DHC's DiffDW with K = 50, **without** the max-normalisation);
``D_theta`` is trained on the unlabeled crops with pseudo-labels
``argmax(GaussSmooth_{3, sigma 1}(GumbelSoftmax(DDIM_10(image_u))) + softmax(D_psi(image_u)))``, and
before every step it is pulled towards the other two (``theta <- 0.99 theta + 0.01 (xi + psi) / 2``,
"aggregating"). ``L = L_deno + L_diff + mu rampup(t, T) L_u`` with DC_and_CE losses (weighted for
``L_diff``). Tested with ``D_theta``.

Reference defaults: V-Net nf 32 BatchNorm with dropout, SGD Nesterov lr 0.01 (README ``-l 1e-2``),
weight decay 3e-5, ``mu`` 10 (README ``-w 10``), EMA weight 0.99, 10 DDIM steps.

Departures (suite protocol, applied to every method): the budget is counted in iterations and the
poly learning rate and the ``mu`` ramp run over it (the reference counts epochs of the unlabeled
set); the sampler's crops and augmentation (the reference's StrongAug: rotation, scale, blur,
brightness, contrast, gamma) are the harness's, the same for every method; model selection is the
study's. Dropout3d(0.1) in every unit follows the config's ``dropout`` flag with the 0.5 dropouts.
The Gumbel noise is drawn from ``torch.rand`` (:func:`gumbel_softmax`), not ``F.gumbel_softmax``'s
``exponential_``, whose CPU kernel gives other numbers for the same seed on AVX2 and AVX-512 CPUs; the
distribution is the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Batch, Method, MethodConfig
from methods.common.class_weights import DifficultyWeighting
from methods.common.diff_vnet import DiffVNet
from methods.common.diffusion import LinearSchedule, ddim_sample
from methods.common.kernels import class_argmax
from methods.common.losses import dice_and_ce, one_hot
from methods.common.ramps import sigmoid_rampup
from methods.registry import register


@dataclass
class AandDConfig(MethodConfig):
    lr: float = 0.01
    mu: float = 10.0
    """Maximum weight of the unlabeled decoder's loss (ramped up over the budget)."""
    aggregate_momentum: float = 0.99
    """``m`` of ``theta <- m theta + (1 - m) (xi + psi) / 2`` (the reference's ``ema_w``)."""
    accumulate_iters: int = 50
    """K of the difficulty weights' moving averages."""
    diffusion_steps: int = 1000
    ddim_steps: int = 10
    """DDIM steps of the pseudo-label sampler."""
    smoothing_sigma: float = 1.0
    """Gaussian smoothing (kernel 3) of the Gumbel-softmaxed diffusion sample."""


def gumbel_softmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``softmax(logits + g)`` along ``dim`` with standard Gumbel noise ``g = -log(-log(1 - U))``, ``U``
    from ``torch.rand`` (temperature 1, soft), as ``F.gumbel_softmax(logits, dim=dim)``.

    ``F.gumbel_softmax`` draws ``-log(E)`` with ``E`` from ``exponential_``, whose CPU kernel returns
    other numbers for the same seed on an AVX-512 CPU than on an AVX2 one, so A&D's pseudo-labels (and
    its fingerprint in ``tests/golden``) followed the CPU kind. ``torch.rand`` is the same on both.
    ``E`` is kept above the dtype's smallest normal number (``U = 0`` would give ``g = inf``).

    >>> _ = torch.manual_seed(0)
    >>> p = gumbel_softmax(torch.zeros(2, 3, 4))
    >>> p.shape, bool(torch.allclose(p.sum(1), torch.ones(2, 4)))
    (torch.Size([2, 3, 4]), True)
    """
    uniform = torch.rand_like(logits)
    exponential = (-torch.log1p(-uniform)).clamp_min(torch.finfo(uniform.dtype).tiny)
    return (logits - exponential.log()).softmax(dim)


def gaussian_smooth(x: torch.Tensor, kernel_size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """Per-channel 3-D Gaussian filter ``(B, C, D, H, W)`` with a normalised ``kernel_size^3`` kernel and
    zero padding ("same" size), as the reference's ``GaussianSmoothing``.

    >>> y = gaussian_smooth(torch.ones(1, 2, 5, 5, 5))
    >>> round(float(y[0, 0, 2, 2, 2]), 6), bool(y[0, 0, 0, 0, 0] < 1)
    (1.0, True)
    """
    coords = torch.arange(kernel_size, dtype=torch.float32, device=x.device) - (kernel_size - 1) / 2
    g = torch.exp(-(coords / sigma) ** 2 / 2)
    kernel = g[:, None, None] * g[None, :, None] * g[None, None, :]
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    weight = kernel.expand(channels, 1, kernel_size, kernel_size, kernel_size)
    return F.conv3d(x, weight, padding=kernel_size // 2, groups=channels)


# 2: the Gumbel noise from torch.rand (gumbel_softmax), the same on every CPU kind.
@register("and", title="A&D", group="imbalance", version="2", config=AandDConfig)
class AandD(Method):
    relative_step_cost = 7.6  # scheduling hint (methods.base.Method)
    unsupervised_weight_field = "mu"
    config: AandDConfig

    def build(self) -> None:
        c = self.config
        self.net = DiffVNet(self.in_channels, self.num_classes, c.base_filters, c.norm, c.dropout)
        self.schedule = LinearSchedule(c.diffusion_steps)
        self.difficulty = DifficultyWeighting(self.num_classes, c.accumulate_iters, normalise_max=False)
        self.optimizers = [self.make_sgd(self.net)]

    def mu(self, step: int) -> float:
        return self.config.mu * sigmoid_rampup(step, self.max_iterations)

    @torch.no_grad()
    def pseudo_labels(self, image_u: torch.Tensor) -> torch.Tensor:
        """``argmax(smooth(gumbel_softmax(DDIM x_0)) + softmax(D_psi))`` ``(B_u, D, H, W)`` (train mode, as
        the reference)."""
        shape = (image_u.shape[0], self.num_classes, *image_u.shape[2:])
        sample = ddim_sample(lambda x_t, t: self.net.denoise(x_t, t, image_u), shape, self.schedule,
                             self.config.ddim_steps, device=image_u.device)
        diffusion_probs = gaussian_smooth(gumbel_softmax(sample, dim=1), 3, self.config.smoothing_sigma)
        psi_probs = self.net.decoder_psi(self.net.features(image_u)).softmax(1)
        return class_argmax(diffusion_probs + psi_probs)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self.net.train()
        self.net.aggregate(self.config.aggregate_momentum)
        x0 = one_hot(batch.label_l, self.num_classes) * 2 - 1
        t = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), device=x0.device)
        x_t = self.schedule.q_sample(x0, t, torch.randn_like(x0))
        logits_xi = self.net.denoise(x_t, t, batch.image_l)
        logits_psi = self.net.decoder_psi(self.net.features(batch.image_l))
        loss_deno = dice_and_ce(logits_xi, batch.label_l)
        weights = self.difficulty.update(logits_xi.detach(), batch.label_l)
        loss_diff = dice_and_ce(logits_psi, batch.label_l, weights)
        pseudo = self.pseudo_labels(batch.image_u)
        loss_u = dice_and_ce(self.net(batch.image_u), pseudo)
        mu = self.mu(step)
        loss = loss_deno + loss_diff + mu * loss_u
        self.backward_step(loss)
        return {"loss": loss.item(), "loss_deno": loss_deno.item(), "loss_diff": loss_diff.item(),
                "loss_u": loss_u.item(), "mu": mu, "max_class_weight": float(weights.max())}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return self.net(x)

    def inference_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net.test_path()}

    def extra_state(self) -> dict[str, Any]:
        return {"difficulty": vars(self.difficulty).copy()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        vars(self.difficulty).update(state["difficulty"])
