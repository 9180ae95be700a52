"""``simis``: SimiS's class weights as adapted in the DHC repository (``code/train_simis.py``;
docs/algorithms.md §4.10).

CPS (A Kaiming, B Xavier) whose losses are class-weighted per network with
``w_c = C (max_k P_k - P_c)``, ``P_c`` the class's share of the voxels (the most frequent class gets
0). Weights start one moving-average step away from ``C`` toward the labeled set's weights,
``0.99 C + 0.01 w_labeled``, and are refreshed every iteration from the counts of the argmax of the
network's output on the **whole batch** (labeled and unlabeled), ``w <- 0.99 w + 0.01 w_cur``.
Weights apply to Dice and CE (supervised) and to the pseudo-label CE. Test: mean logits of A and B.

Departures from the reference: none in what is computed (the class's constructor default momentum
0.95 is overridden to 0.99 by the reference script, as here).
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.common.class_weights import proportion_gap_weights
from methods.common.cotraining import ClassWeightedCPS, CoTrainingConfig
from methods.registry import register


@dataclass
class SimiSConfig(CoTrainingConfig):
    weight_momentum: float = 0.99
    """EMA momentum of each network's class weights (reference script: 0.99)."""


@register("simis", title="SimiS", group="imbalance", version="1", config=SimiSConfig)
class SimiS(ClassWeightedCPS):
    relative_step_cost = 3.7  # scheduling hint (methods.base.Method)
    config: SimiSConfig
    weight_rule = staticmethod(proportion_gap_weights)
    blend_initial_weights = True
    count_whole_batch = True  # the reference counts the whole batch's argmax
