"""Parameter and FLOP counts of a method's inference modules, under a named convention."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from methods.base import Method
from methods.common.vnet import count_parameters

FLOPS_CONVENTION = "torch.utils.flop_counter: 2 FLOPs per multiply-add, forward of predict() on one (1,1,*patch) window"


def params_millions(method: Method) -> float:
    """Parameters (M) of the modules used at inference (shared parameters counted once)."""
    return count_parameters(*method.inference_modules().values()) / 1e6


def forward_gflops(method: Method, patch: Sequence[int]) -> float:
    """GFLOPs of one :meth:`Method.predict` call on a ``(1, 1, *patch)`` window (see ``FLOPS_CONVENTION``).

    Counted on a fresh instance of the method on the ``meta`` device (shapes only, no arithmetic),
    so a 96^3 count is instant and the trained networks are left alone.
    """
    shadow = type(method)(method.config, method.num_classes, method.max_iterations, method.in_channels, "meta")
    x = torch.zeros((1, method.in_channels, *patch), device="meta")
    with FlopCounterMode(display=False) as counter:
        shadow.predict(x)
    return counter.get_total_flops() / 1e9
