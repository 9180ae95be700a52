"""Per-organ Dice / ASD tables in the paper's layout (Tables 1-4), from MLflow runs.

Rows: methods grouped fully / lower bound / general / imbalance. Columns: All, Large, Small and
one column per organ. Cells: mean +- std over seeds (std of the per-seed means, as DHC reports).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.queries import finished_runs  # noqa: E402

GROUP_ORDER = ["fully", "lower-bound", "general", "imbalance"]
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
ORGAN_ABBREV = {"spleen": "Sp", "right_kidney": "RK", "left_kidney": "LK", "gallbladder": "Ga", "esophagus": "Es",
                "liver": "Li", "stomach": "St", "aorta": "Ao", "inferior_vena_cava": "IVC", "pancreas": "Pa",
                "right_adrenal_gland": "RAG", "left_adrenal_gland": "LAG", "duodenum": "Du", "bladder": "Bl",
                "prostate_uterus": "P/U", "portal_splenic_veins": "PSV"}


@dataclass
class RenderedTable:
    """A study table: numbers (mean, std, n seeds) per method and column, and its header facts."""

    metric: str
    mean: pd.DataFrame
    std: pd.DataFrame
    header: dict[str, str]
    groups: pd.Series


def build_table(runs: pd.DataFrame, metric: str = "dice") -> RenderedTable:
    """Aggregate runs into a table for ``metric`` (``dice`` or ``asd``)."""
    organs = runs["tags.organs"].iloc[0].split(",")
    large = set(runs["tags.large_organs"].iloc[0].split(","))
    per_run = pd.DataFrame({o: runs[f"metrics.test/{metric}/{o}"] for o in organs})
    per_run.insert(0, "Small", per_run[[o for o in organs if o not in large]].mean(axis=1))
    per_run.insert(0, "Large", per_run[[o for o in organs if o in large]].mean(axis=1))
    per_run.insert(0, "All", per_run[organs].mean(axis=1))
    per_run["method"] = runs["tags.method_title"].fillna(runs["tags.method"]).values
    grouped = per_run.groupby("method", sort=False)
    groups = runs.groupby(runs["tags.method_title"].fillna(runs["tags.method"]).values)["tags.method_group"].first()
    order = sorted(groups.index, key=lambda m: (GROUP_ORDER.index(groups[m]) if groups[m] in GROUP_ORDER else 99, m))
    mean, std = grouped.mean().loc[order], grouped.std(ddof=0).loc[order]
    seeds = sorted({int(s) for s in runs["tags.seed"]})
    commits = sorted({c[:10] for c in runs["tags.git_commit"].fillna("unknown")})
    dirty = "yes" if (runs["tags.git_dirty"] == "true").any() else "no"
    kind = runs["tags.dataset_kind"].iloc[0]
    header = {"dataset": f"{runs['tags.dataset'].iloc[0]} ({kind.upper() if kind == 'synthetic' else kind})",
              "labeled ratio": runs["params.labeled_ratio"].iloc[0], "profile": runs["tags.profile"].iloc[0],
              "protocol": f"{runs['tags.protocol'].iloc[0]} (ASD {runs['tags.asd_direction'].iloc[0]}, "
                          f"{runs['tags.asd_units'].iloc[0]})",
              "seeds": ", ".join(map(str, seeds)), "commit": ", ".join(commits) + (" (dirty)" if dirty == "yes" else ""),
              "test cases": runs["tags.test_cases"].iloc[0] + " of " + runs["tags.test_cases_total"].iloc[0]}
    return RenderedTable(metric, mean, std, header, groups.loc[order])


def _cell(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.2f}" if np.isnan(std) or std == 0 else f"{mean:.2f} ± {std:.2f}"


def to_frame(table: RenderedTable) -> pd.DataFrame:
    """Formatted strings ``mean ± std`` with a Group column."""
    cells = pd.DataFrame({c: [_cell(m, s) for m, s in zip(table.mean[c], table.std[c])] for c in table.mean.columns},
                         index=table.mean.index)
    cells.insert(0, "Group", table.groups.values)
    cells.index.name = "Method"
    cells.columns = [ORGAN_ABBREV.get(c, c) for c in cells.columns]
    return cells


def published_panel(table_number: int) -> pd.DataFrame:
    """The paper's Table ``table_number`` (Dice %), methods x (All, Large, Small, organs)."""
    raw = pd.read_csv(PUBLISHED_DIR / "tables_1_to_4_dice.csv")
    raw = raw[raw["table"] == table_number]
    wide = raw.pivot_table(index=["group", "method"], columns="class", values="dice", sort=False)
    organs = list(dict.fromkeys(raw["class"]))
    summary = raw.groupby(["group", "method"], sort=False)[["dice_all", "dice_large", "dice_small"]].first()
    out = pd.concat([summary.set_axis(["All", "Large", "Small"], axis=1), wide[organs]], axis=1).reset_index()
    out = out.rename(columns={"group": "Group", "method": "Method"}).set_index("Method")
    out.columns = [ORGAN_ABBREV.get(c, c) for c in out.columns]
    return out


def render_dice_tables(study: str, profile: str, out_dir: Path, table_number: int | None = None,
                       title: str = "", tracking_uri: str | None = None) -> list[Path]:
    """Write ``<study>.md/.csv/.png`` (Dice and ASD) under ``out_dir``; returns the paths."""
    runs = finished_runs(study, profile, tracking_uri)
    dice, asd = build_table(runs, "dice"), build_table(runs, "asd")
    out_dir.mkdir(parents=True, exist_ok=True)
    dice_cells, asd_cells = to_frame(dice), to_frame(asd)
    pd.concat({"dice_percent": dice.mean, "dice_std": dice.std, "asd": asd.mean, "asd_std": asd.std}, axis=1) \
        .to_csv(out_dir / f"{study}.csv")
    header_lines = [f"- **{k}**: {v}" for k, v in dice.header.items()]
    synthetic = "SYNTHETIC" in dice.header["dataset"]
    md = [f"# {study}: {title}".rstrip(": "), "", *header_lines, ""]
    if synthetic:
        md += ["> Our numbers come from a **synthetic** cohort; they are not comparable with the published "
               "numbers on real data below.", ""]
    md += ["## Ours: Dice (%)", "", dice_cells.to_markdown(), "", f"## Ours: ASD ({asd.header['protocol']})", "",
           asd_cells.to_markdown(), ""]
    published = None
    if table_number is not None:
        published = published_panel(table_number)
        md += [f"## Published (TAK paper, Table {table_number}, real data; reference only)", "",
               published.to_markdown(floatfmt=".2f"), ""]
    paths = [out_dir / f"{study}.md", out_dir / f"{study}.csv", out_dir / f"{study}.png"]
    paths[0].write_text("\n".join(md))
    _render_png(paths[2], study, title, dice, dice_cells, asd_cells, published)
    return paths


def _draw(ax: plt.Axes, frame: pd.DataFrame, title: str, color: str) -> None:
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold", color=color)
    cells = frame.reset_index().astype(str).values.tolist()
    cols = ["Method", *frame.columns]
    tab = ax.table(cellText=cells, colLabels=cols, loc="upper left", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.auto_set_column_width(list(range(len(cols))))
    for (row, _), cell in tab.get_celld().items():
        if row == 0:
            cell.set_facecolor("#e6e6e6")


def _render_png(path: Path, study: str, title: str, dice: RenderedTable, dice_cells: pd.DataFrame,
                asd_cells: pd.DataFrame, published: pd.DataFrame | None) -> None:
    panels = [(dice_cells, "Ours: Dice (%)", "black"), (asd_cells, f"Ours: ASD ({dice.header['protocol']})", "black")]
    if published is not None:
        panels.append((published.round(2), "Published (TAK paper, REAL data, reference only; not comparable)",
                       "#8b0000"))
    heights = [0.6 + 0.22 * (len(p[0]) + 1) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(16, 1.2 + sum(heights)), gridspec_kw={"height_ratios": heights})
    header = " | ".join(f"{k}: {v}" for k, v in dice.header.items())
    fig.suptitle(f"{study}: {title}\n{header}", fontsize=9, x=0.01, ha="left")
    for ax, (frame, panel_title, color) in zip(np.atleast_1d(axes), panels):
        _draw(ax, frame, panel_title, color)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
