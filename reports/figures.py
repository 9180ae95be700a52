"""Figures from MLflow: Fig. 1 (organ size vs shape complexity, labelled with a Dice gain) and
Fig. 6 (Dice vs FLOPs, point size = parameters)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from reports.queries import NoRunsError, finished_runs  # noqa: E402
from reports.labels import place_labels  # noqa: E402
from reports.tables import ORGAN_ABBREV, method_labels  # noqa: E402


def _dice_by_method(runs: pd.DataFrame) -> pd.DataFrame:
    organs = runs["tags.organs"].iloc[0].split(",")
    per_run = pd.DataFrame({o: runs[f"metrics.test/dice/{o}"].values for o in organs})
    per_run["method"] = runs["tags.method"].values
    return per_run.groupby("method").mean()


def render_fig1(study: str, profile: str, out_dir: Path, method: str = "tak", baseline: str = "ga",
                cells: list[dict[str, object]] | None = None) -> Path:
    """Voxel share (of the foreground) vs convex-hull ratio per organ (point size = share), each organ
    labelled with ``method``'s Dice gain over ``baseline`` in ``study``. Falls back to the best method
    over ``supervised`` (said in the title) while TAK or GA have no runs."""
    stats = mlflow.search_runs(experiment_names=["data-stats"], filter_string="attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"])
    stats = stats[stats["tags.dataset_kind"] == "synthetic"] if len(stats) else stats
    if stats.empty:
        raise NoRunsError("no synthetic data-stats run; run `python -m benchmarks data stats amos` first")
    latest = stats.iloc[0]
    organs = [c.removeprefix("metrics.share/") for c in stats.columns if c.startswith("metrics.share/")]
    frame = pd.DataFrame({"organ": organs, "share": [100 * latest[f"metrics.share/{o}"] for o in organs],
                          "hull": [latest.get(f"metrics.hull_ratio/{o}") for o in organs]})
    dice = _dice_by_method(finished_runs(study, profile, cells=cells))
    if not {method, baseline} <= set(dice.index):
        method = str(dice.drop(index=["fully", "supervised"], errors="ignore").mean(1).idxmax())
        baseline = "supervised"
    frame["gain"] = [dice.loc[method, o] - dice.loc[baseline, o] if o in dice.columns else float("nan")
                     for o in frame["organ"]]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    sns.scatterplot(data=frame, x="share", y="hull", size="share", sizes=(30, 900), hue="gain", palette="RdYlGn",
                    hue_norm=(-max(abs(frame["gain"]).max(), 1), max(abs(frame["gain"]).max(), 1)), ax=ax,
                    legend=False, edgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("voxel share of the foreground (%, log scale)")
    ax.set_ylabel("convex-hull volume / organ volume")
    ax.set_title(f"{latest['tags.dataset']} (SYNTHETIC): organ size vs shape complexity\n"
                 f"labels: Dice gain of {method} over {baseline} in {study} ({profile} profile)", fontsize=10)
    fig.tight_layout()
    place_labels(ax, frame["share"], frame["hull"],
                 [f"{ORGAN_ABBREV.get(row.organ, row.organ)} {row.gain:+.1f}" for row in frame.itertuples()])
    return save_figure(fig, frame, out_dir, "fig1")


def render_fig6(study: str, profile: str, out_dir: Path, cells: list[dict[str, object]] | None = None) -> Path:
    """Mean Dice of each method in ``study`` vs its forward GFLOPs per window; point size = params."""
    runs = finished_runs(study, profile, cells=cells)
    frame = pd.DataFrame({"method": method_labels(runs).values, "dice": runs["metrics.test/dice_mean"].values,
                          "gflops": runs["metrics.cost/gflops_fwd_patch"].values,
                          "params": runs["metrics.cost/params_M"].values})
    summary = frame.groupby("method").agg(dice=("dice", "mean"), dice_std=("dice", "std"), gflops=("gflops", "first"),
                                          params=("params", "first")).reset_index()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    sns.scatterplot(data=summary, x="gflops", y="dice", size="params", sizes=(60, 700), hue="method", ax=ax,
                    edgecolor="black", legend=False)
    ax.errorbar(summary["gflops"], summary["dice"], yerr=summary["dice_std"].fillna(0), fmt="none", ecolor="grey")
    ax.set_xlabel(f"GFLOPs per {runs['params.profile.patch'].iloc[0]} window (2 x MAC, networks used at inference)")
    ax.set_ylabel("mean Dice (%) over organs, mean ± std over seeds")
    ax.set_title(f"{study} ({runs['tags.dataset'].iloc[0]}, {runs['tags.dataset_kind'].iloc[0].upper()}, "
                 f"{profile} profile): Dice vs FLOPs, point size = params", fontsize=10)
    fig.tight_layout()
    place_labels(ax, summary["gflops"], summary["dice"],
                 [f"{row.method} ({row.params:.1f} M)" for row in summary.itertuples()])
    return save_figure(fig, summary, out_dir, "fig6")


def save_figure(fig: plt.Figure, data: pd.DataFrame, out_dir: Path, name: str) -> Path:
    """Write ``<name>.png`` and the plotted numbers as ``<name>.csv``; returns the PNG path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png", dpi=130)
    plt.close(fig)
    data.to_csv(out_dir / f"{name}.csv", index=False)
    return out_dir / f"{name}.png"
