"""Ramp-ups and learning-rate schedules (spec section 1.4)."""
from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """Laine & Aila's ramp ``exp(-5 (1 - t/L)^2)`` with ``t`` clipped to ``[0, L]``; 1 when ``L == 0``.

    >>> round(sigmoid_rampup(0, 10), 4), sigmoid_rampup(10, 10), sigmoid_rampup(3, 0)
    (0.0067, 1.0, 1.0)
    """
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


def poly_lr(base_lr: float, step: int, max_steps: int, power: float = 0.9) -> float:
    """Polynomial decay ``base_lr * (1 - step / max_steps) ** power`` (clipped at 0).

    >>> poly_lr(0.01, 0, 100), round(poly_lr(0.01, 50, 100), 6)
    (0.01, 0.005359)
    """
    return base_lr * max(0.0, 1.0 - step / max_steps) ** power
