"""Ramp-ups and learning-rate schedules (docs/algorithms.md §1.4)."""
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


def warmup_poly_lr(base_lr: float, step: int, max_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """:func:`poly_lr` after a linear warm-up: ``base_lr (step + 1) / warmup_steps`` for the first
    ``warmup_steps`` steps, then the poly decay over the whole ``max_steps`` (so it still reaches 0 at
    the budget). ``warmup_steps = 0`` is :func:`poly_lr` exactly.

    >>> warmup_poly_lr(0.1, 0, 100, warmup_steps=10), warmup_poly_lr(0.1, 50, 100) == poly_lr(0.1, 50, 100)
    (0.01, True)
    >>> round(warmup_poly_lr(0.1, 9, 100, warmup_steps=10), 4), round(warmup_poly_lr(0.1, 10, 100, warmup_steps=10), 4)
    (0.0919, 0.091)
    """
    decayed = poly_lr(base_lr, step, max_steps, power)
    if step < warmup_steps:
        return min(decayed, base_lr * (step + 1) / warmup_steps)
    return decayed


def warmup_hold_poly_lr(base_lr: float, step: int, max_steps: int, power: float = 0.9, warmup_steps: int = 0,
                        hold_steps: int = 0) -> float:
    """A linear warm-up over the first ``warmup_steps`` steps, ``base_lr`` held until step ``hold_steps``,
    then the poly decay over the remaining ``max_steps - hold_steps`` steps to 0 at ``max_steps`` (a
    warm-up / stable / decay schedule). ``hold_steps = 0`` is :func:`warmup_poly_lr` exactly.

    >>> warmup_hold_poly_lr(0.1, 50, 100, hold_steps=70), warmup_hold_poly_lr(0.1, 70, 100, hold_steps=70)
    (0.1, 0.1)
    >>> round(warmup_hold_poly_lr(0.1, 85, 100, hold_steps=70), 6) == round(poly_lr(0.1, 15, 30), 6)
    True
    >>> warmup_hold_poly_lr(0.1, 0, 100, warmup_steps=10, hold_steps=70), warmup_hold_poly_lr(0.1, 30, 100) == poly_lr(0.1, 30, 100)
    (0.01, True)
    """
    if hold_steps <= 0:
        return warmup_poly_lr(base_lr, step, max_steps, power, warmup_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step < hold_steps or max_steps <= hold_steps:
        return base_lr if step < max_steps else 0.0
    return poly_lr(base_lr, step - hold_steps, max_steps - hold_steps, power)
