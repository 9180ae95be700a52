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
    shadow = _shadow(method)
    x = torch.zeros((1, method.in_channels, *patch), device="meta")
    with FlopCounterMode(display=False) as counter:
        shadow.predict(x)
    return counter.get_total_flops() / 1e9


def _shadow(method: Method) -> Method:
    return type(method)(method.config, method.num_classes, method.max_iterations, method.in_channels, "meta",
                        patch=method.patch, class_names=method.class_names)


def all_networks_gflops(method: Method, patch: Sequence[int]) -> float:
    """GFLOPs of one segmentation forward of EVERY network the method keeps (student and EMA teacher,
    or both co-trained networks) on a ``(1, 1, *patch)`` window, 2 FLOPs per multiply-add.

    This is the convention under which the TAK paper's Table 6 is reproduced: DHC 566.76 G (two
    networks), GA 143.40 G and TAK 150.96 G (student + teacher).
    """
    shadow = _shadow(method)
    x = torch.zeros((1, method.in_channels, *patch), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        for module in shadow.segmentation_networks().values():
            module.eval()
            module(x)
    return counter.get_total_flops() / 1e9
