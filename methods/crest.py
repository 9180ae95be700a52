"""``crest``: CReST's re-weighting by reversed class frequency, as adapted in the DHC repository
(``code/train_crest.py``; docs/algorithms.md §4.9).

CPS (A Kaiming, B Xavier) whose losses are class-weighted per network: ``mu_c = (n_c / max n)^(1/3)``
and the class ranked ``l`` by ``mu`` takes the ``mu`` of the class ranked ``C - 1 - l``, so the most
frequent class (background) gets the rarest class's value. Each network's weights start from the
labeled set's counts and are refreshed every iteration from the counts of the argmax of its own
unlabeled output, ``w <- 0.99 w + 0.01 w_cur``, before the losses are computed. Weights apply to
Dice and CE (supervised) and to the pseudo-label CE. Test: mean logits of A and B.

Departures from the reference: none in what is computed. CReST's original progressive distribution
alignment and its self-training generations are not part of the DHC adaptation and are not here.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.common.class_weights import reversed_frequency_weights
from methods.common.cotraining import ClassWeightedCPS, CoTrainingConfig
from methods.registry import register


@dataclass
class CReSTConfig(CoTrainingConfig):
    weight_momentum: float = 0.99
    """EMA momentum of each network's class weights (reference: 0.99)."""


@register("crest", title="CReST", group="imbalance", version="1", config=CReSTConfig)
class CReST(ClassWeightedCPS):
    relative_step_cost = 3.7  # scheduling hint (methods.base.Method)
    config: CReSTConfig
    weight_rule = staticmethod(reversed_frequency_weights)
