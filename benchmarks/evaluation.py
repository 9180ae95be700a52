"""Test-set evaluation: sliding-window prediction, per-case per-class metrics, summary numbers."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from benchmarks.data import Case, DatasetInfo
from benchmarks.inference import sliding_window_probs
from benchmarks.metrics import Protocol, evaluate_case
from methods.base import Method


def predict_case(method: Method, case: Case, patch: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Label map ``(X, Y, Z)`` predicted for ``case`` (argmax of the uniformly averaged softmax)."""
    image = torch.from_numpy(case.image)[None, None].to(method.device)
    probs = sliding_window_probs(image, method.predict, patch, stride)
    return probs.argmax(1)[0].cpu().numpy().astype(np.uint8)


def evaluate(method: Method, cases: Sequence[Case], info: DatasetInfo, patch: Sequence[int],
             stride: Sequence[int], protocol: Protocol) -> pd.DataFrame:
    """Tidy per-case table: ``case_id, organ, dice, asd, pred_voxels`` (one row per case and foreground
    class; ``pred_voxels`` counts the case's predicted foreground voxels, 0 for an all-background
    prediction, whose ASD the reference rule sets to 0)."""
    rows = []
    for case in cases:
        pred = predict_case(method, case, patch, stride)
        dices, asds = evaluate_case(pred, case.label, info.num_classes, protocol, case.spacing)
        foreground = int(np.count_nonzero(pred))
        rows += [{"case_id": case.case_id, "organ": organ, "dice": d, "asd": a, "pred_voxels": foreground}
                 for organ, d, a in zip(info.organs, dices, asds)]
    return pd.DataFrame(rows)


def summarize(per_case: pd.DataFrame, info: DatasetInfo) -> dict[str, float]:
    """Mean over cases per organ, then over organs (All / Large / Small), as the reference tables.

    Keys: ``test/dice/<organ>``, ``test/asd/<organ>``, ``test/dice_mean``, ``test/dice_large``,
    ``test/dice_small``, ``test/asd_mean`` (NaNs, where a protocol yields them, are left out), and
    ``test/cases_all_background``: the number of cases predicted entirely as background.
    """
    per_organ = per_case.groupby("organ", sort=False)[["dice", "asd"]].mean()
    out: dict[str, float] = {}
    for organ, row in per_organ.iterrows():
        out[f"test/dice/{organ}"] = float(row["dice"])
        out[f"test/asd/{organ}"] = float(row["asd"])
    large = [o for o in info.organs if o in info.large_organs]
    small = [o for o in info.organs if o not in info.large_organs]
    out["test/dice_mean"] = float(np.nanmean(per_organ["dice"]))
    out["test/dice_large"] = float(np.nanmean(per_organ.loc[large, "dice"])) if large else float("nan")
    out["test/dice_small"] = float(np.nanmean(per_organ.loc[small, "dice"])) if small else float("nan")
    out["test/asd_mean"] = float(np.nanmean(per_organ["asd"]))
    if "pred_voxels" in per_case:
        out["test/cases_all_background"] = float((per_case.groupby("case_id")["pred_voxels"].first() == 0).sum())
    return out
