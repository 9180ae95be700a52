"""Ablation tables (the paper's Tables 5, 7, 8, 9) from MLflow runs, beside the published values.

A study's ``variants`` name the settings (``value``: the ablated parameter, e.g. ``{lambda_c: 0.5}``);
its ``published`` entry names the CSV and key columns of the paper's table. Ours and the published
numbers are two separate panels: ours come from the study's profile (synthetic under smoke/cpu), the
paper's from real AMOS on GPUs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.queries import NoRunsError, StudyRuns, others_note, study_runs  # noqa: E402
from reports.tables import PUBLISHED_DIR, build_table  # noqa: E402

OURS_COLOUR, PUBLISHED_COLOUR = "#1f4e79", "#8b0000"


class Study(Protocol):
    """What an ablation table needs of a study (``benchmarks.config.Study`` has it); reports read MLflow
    and this plain description only, never the harness or the methods."""

    study: str
    title: str
    methods: list[str]
    variants: dict[str, dict[str, Any]]
    published: dict[str, Any]


def _value_frame(study: Study) -> pd.DataFrame:
    """One row per study entry with its ablated values (columns = the published key)."""
    keys = list(study.published.get("key", []))
    rows = []
    for name in study.methods:
        value = study.variants.get(name, {}).get("value") or {}
        rows.append({"variant": name, **{k: value.get(k) for k in keys}})
    return pd.DataFrame(rows).set_index("variant")


def ablation_frames(study: Study, profile: str, tracking_uri: str | None = None,
                    cells: list[dict[str, object]] | None = None, absent: dict[str, str] | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str], list[str]]:
    """``(ours, published, header, footnotes)``: ours has one row per variant (value columns, Dice All /
    Large / Small mean and std over seeds, seeds, status) from the study's ``cells`` only; published
    is the paper's table (or empty); footnotes list unfinished cells and runs not part of the study.
    ``absent``: entries whose inputs are missing (name -> reason), as the harness found them."""
    ours = _value_frame(study)
    footnotes: list[str] = []
    diverged: dict[str, str] = {}
    try:
        selected: StudyRuns = study_runs(study.study, profile, cells, tracking_uri)
        runs = selected.runs.copy()
        footnotes = others_note(selected)
        diverged = {str(c["method"]): str(c["step"]) for c in selected.diverged}
    except NoRunsError:
        runs = pd.DataFrame()
    header: dict[str, str] = {"profile": profile}
    if not runs.empty:
        runs["tags.method_title"] = runs["tags.method"]  # variants share a title: label them by name
        table = build_table(runs, "dice")
        header = table.header
        for column in ("All", "Large", "Small"):
            ours[f"Dice {column}"] = table.mean[column].reindex(ours.index)
            ours[f"Dice {column} std"] = table.std[column].reindex(ours.index)
        ours["seeds"] = runs.groupby("tags.method")["tags.seed"].nunique().reindex(ours.index)
    finished = set(runs.get("tags.method", []))
    ours["status"] = [f"diverged (iteration {diverged[name]})" if name in diverged and name not in finished
                      else _status(name in finished, (absent or {}).get(name)) for name in ours.index]
    published = pd.DataFrame()
    if study.published.get("file"):
        published = pd.read_csv(PUBLISHED_DIR / study.published["file"])
    return ours, published, header, footnotes


def _status(has_runs: bool, absent_reason: str | None) -> str:
    if has_runs:
        return "finished"
    if absent_reason:
        return f"inputs absent: {absent_reason.splitlines()[0]}"
    return "not run yet"


def _cell(mean: float, std: float) -> str:
    return "" if pd.isna(mean) else f"{mean:.2f} ± {std:.2f}"


def _display(ours: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ours.columns if not c.startswith("Dice") and c not in ("seeds", "status")]
    shown = ours[keys].copy()
    for column in ("All", "Large", "Small"):
        if f"Dice {column}" in ours:
            shown[f"Dice {column} (%)"] = [_cell(m, s) for m, s in zip(ours[f"Dice {column}"], ours[f"Dice {column} std"])]
    if "seeds" in ours:
        shown["seeds"] = ours["seeds"].fillna(0).astype(int)
    shown["status"] = ours["status"]
    return shown


def render_ablation(study: Study, profile: str, out_dir: Path, tracking_uri: str | None = None,
                    cells: list[dict[str, object]] | None = None, absent: dict[str, str] | None = None
                    ) -> list[Path]:
    """Write ``<study>.md/.csv/.tex/.png`` under ``out_dir``; returns the paths."""
    ours, published, header, footnotes = ablation_frames(study, profile, tracking_uri, cells, absent)
    shown = _display(ours)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{study.study}.{ext}" for ext in ("md", "csv", "tex", "png")]
    ours.to_csv(paths[1])
    synthetic = "SYNTHETIC" in header.get("dataset", "")
    md = [f"# {study.study}: {study.title}", "", *[f"- **{k}**: {v}" for k, v in header.items()], ""]
    if synthetic:
        md += ["> Ours: a **synthetic** cohort under this profile; not comparable with the published numbers "
               "(real AMOS, GPU), shown in their own table below.", ""]
    md += ["## Ours: Dice (%), mean ± std over seeds", "", shown.to_markdown(), "", *[f"{f}\n" for f in footnotes]]
    if not published.empty:
        md += [f"## Published (TAK paper, {study.published['file']}; real data, reference only)", "",
               published.to_markdown(index=False, floatfmt=".2f"), ""]
    paths[0].write_text("\n".join(md))
    tex = [f"% {study.study}: {study.title}; ours ({profile}) and, separately, the published values",
           shown.to_latex(), published.to_latex(index=False, float_format="%.2f") if not published.empty else ""]
    paths[2].write_text("\n".join(t.replace("_", "\\_").replace("±", "$\\pm$") if not t.startswith("%") else t
                                  for t in tex))
    _plot(paths[3], study, ours, published, header)
    return paths


def _labels(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    """Tick labels: the single key's value, or the true flags of a boolean key set (Table 5)."""
    if len(keys) == 1:
        return [str(v) for v in frame[keys[0]]]
    return ["+".join(k for k in keys if bool(row[k])) or "-" for _, row in frame.iterrows()]


def _plot(path: Path, study: Study, ours: pd.DataFrame, published: pd.DataFrame, header: dict[str, str]) -> None:
    keys = list(study.published.get("key", []))
    numeric = len(keys) == 1 and pd.api.types.is_numeric_dtype(pd.Series([v for v in ours[keys[0]] if v is not None]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = ((axes[0], ours, "Dice All", f"Ours ({header.get('profile')}: {header.get('dataset', 'no runs yet')})",
               OURS_COLOUR),
              (axes[1], published, "dice_all", "Published (TAK paper, real AMOS; reference only)", PUBLISHED_COLOUR))
    for ax, frame, column, title, colour in panels:
        ax.set_title(title, fontsize=9, color=colour, loc="left")
        ax.set_ylabel("mean Dice (%)")
        if frame.empty or column not in frame:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
            continue
        labels = _labels(frame, keys)
        values = frame[column].astype(float).values
        errors = frame["Dice All std"].astype(float).values if column == "Dice All" else None
        if numeric:
            x = list(range(len(labels)))  # evenly spaced: the sweeps span 3 orders of magnitude
            ax.errorbar(x, values, yerr=errors, marker="o", color=colour, capsize=3)
            ax.set_xticks(x, labels)
            ax.set_xlabel(keys[0])
        else:
            ax.bar(range(len(labels)), values, yerr=errors, color=colour, alpha=0.8, capsize=3)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        for i, v in enumerate(values):
            if pd.notna(v):
                ax.annotate(f"{v:.1f}", (i, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    absent = ours.index[ours["status"] != "finished"]
    note = f"   [no result: {', '.join(absent)}]" if len(absent) else ""
    fig.suptitle(f"{study.study}: {study.title}{note}", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)

