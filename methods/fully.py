"""``fully``: the same network and loss as ``supervised`` trained on every training label.

The paper's "V-Net (fully)" row: the upper bound (DHC ``train_fully.py``, batch 4). Every batch slot
holds a labeled crop from the whole training set, so this method is not semi-supervised.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.registry import register
from methods.supervised import Supervised, SupervisedConfig


@dataclass
class FullyConfig(SupervisedConfig):
    """As ``supervised``."""


@register("fully", title="V-Net (fully)", group="fully", version="1", config=FullyConfig)
class Fully(Supervised):
    relative_step_cost = 1.6  # scheduling hint (methods.base.Method): 4 labeled crops a step
    label_pool = "all"
    batch_policy = "all_labeled"
