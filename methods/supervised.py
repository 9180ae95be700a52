"""``supervised``: a V-Net trained on the labeled cases only (the lower bound of every table).

Loss: DHC's ``DC_and_CE`` (cross-entropy + foreground batch Dice, docs/algorithms.md §1.3a), one network,
Kaiming init, DHC-family optimiser. Each step sees the profile's labeled crops only (2 under every
profile): the same labeled data per step as a semi-supervised method, without the unlabeled part.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import Batch, Method, MethodConfig
from methods.common.losses import dice_and_ce
from methods.registry import register


@dataclass
class SupervisedConfig(MethodConfig):
    """DHC-family defaults (docs/algorithms.md §4.4); no extra hyper-parameters."""


@register("supervised", title="V-Net (labeled only)", group="lower-bound", version="1",
          config=SupervisedConfig)
class Supervised(Method):
    batch_policy = "labeled_only"
    label_pool = "labeled"

    def build(self) -> None:
        self.net = self.make_vnet(init="kaiming")
        self.optimizers = [self.make_sgd(self.net)]

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self.net.train()
        loss = dice_and_ce(self.net(batch.image_l), batch.label_l)
        self.backward_step(loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return self.net(x)

    def inference_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}
