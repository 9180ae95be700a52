"""Uncertainty and significance for the tables: bootstrap CIs over cases, Wilcoxon signed-rank tests.

>>> lo, hi = bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0]), n_boot=2000, seed=0)
>>> bool(1.0 <= lo < 2.5 < hi <= 4.0)
True
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaNs dropped)."""
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (NaN when undefined)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.allclose(a, b):
        return float("nan")
    return float(wilcoxon(a, b).pvalue)


def per_case_dice(runs: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """Per-case mean Dice over organs for each run, from the runs' ``eval/per_case.csv`` artifacts.

    Args:
        runs: ``mlflow.search_runs`` rows; ``labels``: the method label of each row.

    Returns:
        ``method, seed, case_id, dice`` (one row per run and case).
    """
    frames = []
    for run_id, label, seed in zip(runs["run_id"], labels, runs["tags.seed"]):
        table = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/eval/per_case.csv"))
        case_mean = table.groupby("case_id")["dice"].mean().rename("dice").reset_index()
        frames.append(case_mean.assign(method=label, seed=seed))
    return pd.concat(frames, ignore_index=True)


def method_statistics(per_case: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """Per method: bootstrap 95 % CI of the mean per-case Dice (seeds averaged per case) and the
    Wilcoxon p-value against ``reference`` on the paired per-case Dice."""
    by_case = per_case.groupby(["method", "case_id"])["dice"].mean().unstack("case_id")
    rows = {}
    for method, values in by_case.iterrows():
        lo, hi = bootstrap_ci(values.to_numpy(dtype=float))
        p = (paired_wilcoxon(values.to_numpy(dtype=float), by_case.loc[reference].to_numpy(dtype=float))
             if reference in by_case.index and method != reference else float("nan"))
        rows[method] = {"ci_low": lo, "ci_high": hi, "p_value": p}
    return pd.DataFrame.from_dict(rows, orient="index")
