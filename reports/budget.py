"""The budget check: every method of a table at B/2, B and 2B iterations (B = the profile's budget).

A ranking that changes between B and 2B is a budget artefact, not a property of the methods. The
figure draws mean Dice (All, Large, Small organs) against iterations, one line per method; the table
gives each method's Dice at every budget and its change from B to 2B, marked when it exceeds the
tolerance (3 points): such a method had not converged at B.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.queries import others_note, study_runs  # noqa: E402
from reports.tables import method_labels  # noqa: E402

TOLERANCE = 3.0  # Dice points between B and 2B that still count as converged
COLUMNS = {"All": "metrics.test/dice_mean", "Large": "metrics.test/dice_large", "Small": "metrics.test/dice_small"}


def budget_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of Dice All / Large / Small per (method, iterations)."""
    frame = pd.DataFrame({"method": method_labels(runs).values,
                          "iterations": runs["tags.iterations"].astype(int).values,
                          **{name: runs[column].values for name, column in COLUMNS.items()}})
    return frame.groupby(["method", "iterations"], sort=True).mean().reset_index()


def convergence_table(frame: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per method: Dice All at each budget, the change from B to 2B and whether it is within tolerance."""
    wide = frame.pivot(index="method", columns="iterations", values="All")
    wide.columns = [f"Dice All @ {c}" for c in wide.columns]
    at_b, at_2b = f"Dice All @ {budget}", f"Dice All @ {2 * budget}"
    if at_b in wide and at_2b in wide:
        wide["change B -> 2B"] = wide[at_2b] - wide[at_b]
        wide["converged at B"] = np.where(wide["change B -> 2B"].isna(), "not run yet",
                                          np.where(wide["change B -> 2B"].abs() <= TOLERANCE, "yes", "no"))
    return wide


def render_budget_check(experiment: str, profile: str, out_dir: Path, budget: int, title: str = "",
                        tracking_uri: str | None = None, cells: list[dict[str, object]] | None = None,
                        name: str = "budget-check") -> list[Path]:
    """Write ``<name>.md/.csv/.png`` from the runs of ``cells`` in ``experiment`` (budget-check's cells
    live in table2's experiment); ``budget`` is B, the profile's budget of the underlying table."""
    study = name
    selected = study_runs(experiment, profile, cells, tracking_uri)
    runs = selected.runs
    frame = budget_frame(runs)
    table = convergence_table(frame, budget)
    kind = runs["tags.dataset_kind"].iloc[0]
    dataset = f"{runs['tags.dataset'].iloc[0]} ({kind.upper() if kind == 'synthetic' else kind})"
    seeds = ", ".join(sorted(set(runs["tags.seed"])))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{study}.md", out_dir / f"{study}.csv", out_dir / f"{study}.png"]
    frame.to_csv(paths[1], index=False)
    not_converged = table.index[table.get("converged at B", pd.Series(dtype=str)) == "no"].tolist()
    md = [f"# {study}: {title}".rstrip(": "), "", f"- **dataset**: {dataset}", f"- **profile**: {profile}",
          f"- **budget B**: {budget} iterations; cells at {', '.join(map(str, sorted(frame['iterations'].unique())))}",
          f"- **seeds**: {seeds}", "",
          "## Mean Dice (%) over organs at each budget", "", table.to_markdown(floatfmt=".2f"), "",
          f"Converged at B: Dice All changes by at most {TOLERANCE:g} points from B to 2B. "
          + (f"Not converged: {', '.join(not_converged)}." if not_converged else "Every finished method converged."),
          "", *[f"{line}\n" for line in others_note(selected)]]
    paths[0].write_text("\n".join(md))
    _plot(paths[2], frame, budget, f"{study}: {title} | {dataset}, {profile} profile, seeds {seeds}")
    return paths


def _plot(path: Path, frame: pd.DataFrame, budget: int, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharex=True)
    colours, markers = plt.get_cmap("tab20"), "osD^v<>ph"  # 20 colours x 9 markers: 18 methods stay apart
    for ax, column in zip(axes, COLUMNS):
        for i, (method, rows) in enumerate(frame.groupby("method", sort=True)):
            ax.plot(rows["iterations"], rows[column], marker=markers[i % len(markers)], color=colours(i % 20),
                    label=method)
        ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(frame["iterations"].unique()), [str(v) for v in sorted(frame["iterations"].unique())])
        ax.set_title(f"Dice {column} organs" if column != "All" else "Dice, all organs", fontsize=10)
        ax.set_xlabel("training iterations (dotted: the default budget B)")
        ax.set_ylabel("mean Dice (%)")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
