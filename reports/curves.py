"""Training curves from MLflow: one logged training metric (``train/<metric>``) of every study run that
logged it, against the iteration.

The location loss (``loss_loc``, MagicNet, GA and TAK) is drawn with its two reference lines: a uniform
guess over the run's cubes (``ln(cubes)``, the loss of a head that learned nothing) and ``0.9 ln(cubes)``,
below which we say the head learns. Data flows one way: runs -> frame -> figure; nothing is recomputed.

>>> uniform_guess_loss(4)
1.3862943611198906
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from reports.errors import NoRunsError  # noqa: E402
from reports.figures import save_figure  # noqa: E402
from reports.queries import finished_runs  # noqa: E402
from reports.tables import method_labels  # noqa: E402

LEARNS_BELOW = 0.9  # the location head learns when its loss ends below this share of a uniform guess
SMOOTH = 5  # logged points in the running mean drawn over each curve (the CSV keeps the logged values)


def uniform_guess_loss(cubes: int) -> float:
    """Cross-entropy (nats) of a uniform guess over ``cubes`` positions: ``ln(cubes)``."""
    return math.log(cubes)


def cube_count(grid: str) -> int | None:
    """Cubes in a logged ``cube_grid`` parameter (``"[2, 1, 2]"`` or ``"(2, 1, 2)"`` -> 4); None when it
    is absent.

    >>> cube_count("(2, 1, 1)"), cube_count(float("nan"))
    (2, None)
    """
    if not isinstance(grid, str) or not grid.strip("[]() "):
        return None
    return math.prod(int(side) for side in grid.strip("[]() ").split(","))


def curve_frame(runs: pd.DataFrame, metric: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """Columns ``method`` (the table's label), ``seed``, ``run_id``, ``step`` (iteration), ``value`` and ``cubes``
    (None outside the magic-cube methods): the full history of ``train/<metric>`` of each run in
    ``runs`` that logged it; raises :class:`NoRunsError` when none did."""
    client = client or MlflowClient()
    labels = method_labels(runs)
    grids = runs.get("params.method_config.cube_grid", pd.Series([None] * len(runs), index=runs.index))
    seeds = runs.get("tags.seed", pd.Series([""] * len(runs), index=runs.index))
    rows = []
    for index, run in runs.iterrows():
        for point in client.get_metric_history(run["run_id"], f"train/{metric}"):
            rows.append({"method": labels[index], "seed": seeds[index], "run_id": run["run_id"], "step": point.step,
                         "value": point.value, "cubes": cube_count(grids[index])})
    if not rows:
        raise NoRunsError(f"no run of the study logged train/{metric} (the methods log it only if their "
                          f"train step returns it; `loss_loc` is MagicNet's, GA's and TAK's)")
    return pd.DataFrame(rows).sort_values(["method", "step"]).reset_index(drop=True)


def render_curves(study: str, profile: str, out_dir: Path, metric: str = "loss_loc",
                  cells: list[dict[str, object]] | None = None) -> Path:
    """``curves_<metric>.png`` and ``.csv`` in ``out_dir``: ``train/<metric>`` of the study's finished runs
    (log scale when every value is positive), each faint as logged and solid as the running mean of
    ``SMOOTH`` logged points; for ``loss_loc`` with the uniform-guess lines."""
    runs = finished_runs(study, profile, cells=cells)
    frame = curve_frame(runs, metric)
    fig, ax = plt.subplots(figsize=(8, 5))
    runs_per_method = frame.groupby("method")["run_id"].nunique()
    for (method, seed, _), points in frame.groupby(["method", "seed", "run_id"], sort=True):  # one curve a run
        label = method if runs_per_method[method] == 1 else f"{method}, seed {seed}"
        line, = ax.plot(points["step"], points["value"], linewidth=0.8, alpha=0.35)  # one batch per logged
        ax.plot(points["step"], points["value"].rolling(SMOOTH, min_periods=1).mean(), color=line.get_color(),
                label=label, linewidth=1.6)  # point is noisy: faint as logged, the running mean solid
    if metric == "loss_loc":
        for cubes in sorted(frame["cubes"].dropna().unique()):
            guess = uniform_guess_loss(int(cubes))
            ax.axhline(guess, color="grey", linestyle="--", linewidth=1)
            ax.axhline(LEARNS_BELOW * guess, color="black", linestyle=":", linewidth=1)
            ax.text(frame["step"].max(), guess, f" ln {int(cubes)} (uniform guess)", va="bottom", ha="right",
                    fontsize=8)
            ax.text(frame["step"].max(), LEARNS_BELOW * guess, f" {LEARNS_BELOW} ln {int(cubes)}", va="top",
                    ha="right", fontsize=8)
    if (frame["value"] > 0).all():
        ax.set_yscale("log")
    kind = str(runs["tags.dataset_kind"].iloc[0]).upper() if "tags.dataset_kind" in runs else ""
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"train/{metric}")
    ax.set_title(f"{study} ({runs['tags.dataset'].iloc[0]}, {kind}, {profile} profile): train/{metric}",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, frame, out_dir, f"curves_{metric}")
