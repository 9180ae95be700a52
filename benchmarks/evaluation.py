"""Test-set evaluation: sliding-window prediction, per-case per-class metrics, summary numbers."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmarks.data import Case, DatasetInfo
from benchmarks.inference import sliding_window_probs
from benchmarks.metrics import METRICS, Protocol, case_metrics
from methods.base import Method
from methods.common.kernels import class_argmax


def predict_case(method: Method, case: Case, patch: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Label map ``(X, Y, Z)`` predicted for ``case`` (argmax of the uniformly averaged softmax)."""
    image = torch.tensor(case.image)[None, None].to(method.device)  # a copy: cached cases are read-only
    probs = sliding_window_probs(image, method.predict, patch, stride)
    return class_argmax(probs)[0].cpu().numpy().astype(np.uint8)


def case_predictions(method: Method, cases: Sequence[Case], patch: Sequence[int], stride: Sequence[int],
                     progress: bool = False, description: str = "evaluate") -> list[np.ndarray]:
    """The label map ``(X, Y, Z)`` uint8 of every case (:func:`predict_case`), in order."""
    return [predict_case(method, case, patch, stride)
            for case in tqdm(cases, desc=description, disable=not progress, leave=False, position=1, unit="case",
                             dynamic_ncols=True)]


def tidy_metrics(predictions: Sequence[np.ndarray], cases: Sequence[Case], info: DatasetInfo,
                 protocol: Protocol) -> pd.DataFrame:
    """Tidy per-case table: ``case_id, organ, dice, asd, hd95, hd, nsd, pred_voxels`` (one row per case
    and foreground class; ``pred_voxels`` counts the case's predicted foreground voxels, 0 for an
    all-background prediction, whose ASD the reference rule sets to 0)."""
    rows = []
    for pred, case in zip(predictions, cases):
        metrics = case_metrics(pred, case.label, info.num_classes, protocol, case.spacing)
        foreground = int(np.count_nonzero(pred))
        rows += [{"case_id": case.case_id, "organ": organ, **{m: float(metrics[m][i]) for m in METRICS},
                  "pred_voxels": foreground} for i, organ in enumerate(info.organs)]
    return pd.DataFrame(rows)


def evaluate(method: Method, cases: Sequence[Case], info: DatasetInfo, patch: Sequence[int],
             stride: Sequence[int], protocol: Protocol, progress: bool = False,
             description: str = "evaluate") -> pd.DataFrame:
    """:func:`tidy_metrics` of :func:`case_predictions`."""
    return tidy_metrics(case_predictions(method, cases, patch, stride, progress, description), cases, info, protocol)


def summarize(per_case: pd.DataFrame, info: DatasetInfo) -> dict[str, float]:
    """Mean over cases per organ, then over organs (All / Large / Small), as the reference tables.

    Keys: ``test/<metric>/<organ>`` for every metric the table has (dice, asd, hd95, hd, nsd),
    ``test/dice_mean``, ``test/dice_large``, ``test/dice_small``, ``test/<metric>_mean`` (NaNs,
    where a protocol yields them, are left out), and ``test/cases_all_background``: the number of
    cases predicted entirely as background.
    """
    metrics = [m for m in METRICS if m in per_case]
    per_organ = per_case.groupby("organ", sort=False)[metrics].mean()
    out: dict[str, float] = {}
    for organ, row in per_organ.iterrows():
        for metric in metrics:
            out[f"test/{metric}/{organ}"] = float(row[metric])
    large = [o for o in info.organs if o in info.large_organs]
    small = [o for o in info.organs if o not in info.large_organs]
    out["test/dice_mean"] = float(np.nanmean(per_organ["dice"]))
    out["test/dice_large"] = float(np.nanmean(per_organ.loc[large, "dice"])) if large else float("nan")
    out["test/dice_small"] = float(np.nanmean(per_organ.loc[small, "dice"])) if small else float("nan")
    for metric in metrics:
        if metric != "dice":
            out[f"test/{metric}_mean"] = float(np.nanmean(per_organ[metric]))
    if "pred_voxels" in per_case:
        out["test/cases_all_background"] = float((per_case.groupby("case_id")["pred_voxels"].first() == 0).sum())
    return out
