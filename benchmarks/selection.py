"""Model selection: which network of a run is evaluated on the test set (a named, recorded protocol).

``last`` takes the network of the last iteration. ``best_on_eval`` validates on the **eval** split
(never a test case) every ``interval`` of the budget from ``start`` on, keeps the network with the
highest mean validation Dice and, with ``patience``, stops when that many iterations bring no
improvement. The references' rules are available by name (docs/algorithms.md §3.2), their cadences expressed as
fractions of their own training length so that they carry over to any budget:

========== ========================================================================================
``tak``     every 5 of 161 epochs from epoch 20; sliding window, stride 90/90/80 of a 96 patch
            (Synapse 80/80/64); a class absent from both masks scores 0
``ga``      every 1000 of 17 000 iterations (Synapse 500); stride and empty rule as ``tak``
``dhc``     every 10 of 200 epochs on a centre crop of each eval volume, Dice only; early stopping
            after 50 epochs without improvement (Synapse: 100 of 300); absent classes left out
``magicnet`` the last iteration (the reference has no validation set)
========== ========================================================================================

A study applies one rule to every method (an identical comparison) or ``reference`` (each method
its own rule, :attr:`methods.base.Method.reference_selection`) to reproduce published rows.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from benchmarks.data import Case
from benchmarks.inference import sliding_window_probs
from benchmarks.metrics import dice
from methods.base import Method
from methods.common.kernels import class_argmax


@dataclass(frozen=True)
class SelectionRule:
    """A model-selection protocol; every field is recorded on the run (``model_selection.*``)."""

    name: str
    best_on_eval: bool
    interval: float = 0.05  # fraction of the budget between validations
    start: float = 0.0  # fraction of the budget before the first validation
    window: Literal["sliding", "centre_crop"] = "sliding"
    stride: tuple[float, float, float] | None = None  # validation stride as fractions of the patch (None: eval stride)
    both_empty: Literal["zero", "nan"] = "nan"  # a class absent from both masks: Dice 0, or left out
    patience: float = 0.0  # early stopping: fraction of the budget without improvement (0: off)
    split: str = "eval"

    def steps(self, iterations: int) -> list[int]:
        """Iterations (steps done) after which the network is validated; always includes the last."""
        if not self.best_on_eval:
            return []
        every = max(1, round(self.interval * iterations))
        first = max(every, round(self.start * iterations))
        return sorted({*range(first, iterations + 1, every), iterations})

    def validation_stride(self, patch: Sequence[int], eval_stride: Sequence[int]) -> tuple[int, int, int]:
        if self.stride is None:
            return tuple(eval_stride)  # type: ignore[return-value]
        return tuple(max(1, min(p, round(f * p))) for f, p in zip(self.stride, patch))  # type: ignore[return-value]

    def record(self, iterations: int) -> dict[str, Any]:
        """The rule's parameters with the iterations they resolve to (params and tags of the run)."""
        steps = self.steps(iterations)
        return {**dataclasses.asdict(self), "validations": len(steps),
                "patience_iterations": round(self.patience * iterations)}


TAK_STRIDE = (90 / 96, 90 / 96, 80 / 96)
RULES: dict[str, SelectionRule] = {
    "last": SelectionRule("last", False),
    "best_on_eval": SelectionRule("best_on_eval", True, interval=0.05, start=0.25),
    "tak": SelectionRule("tak", True, interval=5 / 161, start=20 / 161, stride=TAK_STRIDE, both_empty="zero"),
    "ga": SelectionRule("ga", True, interval=1000 / 17000, stride=TAK_STRIDE, both_empty="zero"),
    "dhc": SelectionRule("dhc", True, interval=10 / 200, window="centre_crop", patience=50 / 200),
    "magicnet": SelectionRule("magicnet", False),
}
SYNAPSE = {"tak": {"stride": (80 / 96, 80 / 96, 64 / 96)},
           "ga": {"interval": 500 / 17000, "stride": (80 / 96, 80 / 96, 64 / 96)},
           "dhc": {"interval": 10 / 300, "patience": 100 / 300}}


def selection_rule(name: str, dataset: str = "amos") -> SelectionRule:
    """The rule ``name`` (with the reference's Synapse cadence on a Synapse dataset)."""
    if name not in RULES:
        raise KeyError(f"unknown model selection {name!r}; known: {sorted(RULES)} or 'reference'")
    rule = RULES[name]
    if "synapse" in dataset and name in SYNAPSE:
        rule = dataclasses.replace(rule, **SYNAPSE[name])
    return rule


def centre_crop(array: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """The ``patch``-sized centre of ``array`` (zero-padded, centred, where an axis is shorter)."""
    pad = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(array.shape, patch)]
    array = np.pad(array, pad) if any(sum(p) for p in pad) else array
    starts = [(s - p) // 2 for s, p in zip(array.shape, patch)]
    return array[tuple(slice(st, st + p) for st, p in zip(starts, patch))]


def validation_dice(method: Method, cases: Sequence[Case], num_classes: int, rule: SelectionRule,
                    patch: Sequence[int], stride: Sequence[int]) -> float:
    """Mean over cases of the mean foreground Dice (%) under ``rule``'s window and empty-mask rule."""
    scores = []
    for case in cases:
        if rule.window == "centre_crop":
            image, label = centre_crop(case.image, patch), centre_crop(case.label, patch)
            x = torch.tensor(image)[None, None].to(method.device)  # a copy: cached cases are read-only
            pred = class_argmax(method.predict(x))[0].cpu().numpy()
        else:
            label = case.label
            x = torch.tensor(case.image)[None, None].to(method.device)
            pred = class_argmax(sliding_window_probs(x, method.predict, patch, stride))[0].cpu().numpy()
        values = []
        for c in range(1, num_classes):
            p, g = pred == c, label == c
            if not p.any() and not g.any():
                values.append(0.0 if rule.both_empty == "zero" else np.nan)
            else:
                values.append(100.0 * dice(p, g))
        scores.append(np.nanmean(values) if not np.all(np.isnan(values)) else np.nan)
    return float(np.nanmean(scores))


class Selector:
    """Runs ``rule`` during one training run: validates at its steps, keeps the best network's state,
    tells the loop when to stop early, and restores the best network at the end.

    Args:
        validate: ``() -> mean validation Dice`` of the method as it is now (eval-split cases only).
        on_score: receives ``(step, score)`` (the runner logs ``val/dice_mean``).
    """

    def __init__(self, rule: SelectionRule, method: Method, iterations: int,
                 validate: Callable[[], float], on_score: Callable[[int, float], None] | None = None) -> None:
        self.rule, self.method, self.iterations = rule, method, iterations
        self.validate, self.on_score = validate, on_score
        self.steps = set(rule.steps(iterations))
        self.patience = round(rule.patience * iterations)
        self.history: list[tuple[int, float]] = []
        self.best_step, self.best_score = 0, -np.inf
        self.best_modules: dict[str, Any] | None = None
        self.stopped_early = False

    def __call__(self, done: int) -> bool:
        """After ``done`` steps: validate when due; True means stop training (early stopping)."""
        if done not in self.steps:
            return False
        score = self.validate()
        self.history.append((done, score))
        if self.on_score:
            self.on_score(done, score)
        if score > self.best_score:
            self.best_step, self.best_score = done, score
            self.best_modules = copy.deepcopy({k: m.state_dict() for k, m in self.method.modules().items()})
        elif self.patience and done - self.best_step >= self.patience:
            self.stopped_early = True
            return True
        return False

    def finish(self) -> int:
        """Load the selected network (best validation, or the last one under ``last``); its iteration."""
        if self.rule.best_on_eval and self.best_modules is not None:
            for name, module in self.method.modules().items():
                module.load_state_dict(self.best_modules[name])
            return self.best_step
        return self.iterations if not self.history else self.history[-1][0]

    def state(self) -> dict[str, Any]:
        return {"history": list(self.history), "best_step": self.best_step, "best_score": self.best_score,
                "best_modules": self.best_modules, "stopped_early": self.stopped_early}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]  # type: ignore[misc]
        self.best_step, self.best_score = state["best_step"], state["best_score"]
        self.best_modules, self.stopped_early = state["best_modules"], state["stopped_early"]
