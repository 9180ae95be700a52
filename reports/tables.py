"""Per-organ Dice / ASD tables in the paper's layout (Tables 1-4), from MLflow runs.

Rows: methods grouped fully / lower bound / general / imbalance. Columns: All, Large, Small and
one column per organ. Cells: mean +- std over seeds (std of the per-seed means, as DHC reports);
``n`` is the number of seeds finished (of those the study asks for). The Dice table adds the
bootstrap 95 % CI of the mean per-case Dice and the Wilcoxon signed-rank p-value against the
reference method (TAK when it ran). Best and second best per column are marked (bold / underlined;
Dice higher is better, ASD lower is better).

A row whose network predicted only background on some test case is flagged (``†``) and never
marked best: under the reference rule such a case scores ASD 0 for every organ, so its ASD cells
are shown as not meaningful (``n/m``) instead of a misleadingly small number.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.queries import StudyRuns, others_note, study_runs  # noqa: E402
from reports.statistics import method_statistics, per_case_dice  # noqa: E402

GROUP_ORDER = ["fully", "lower-bound", "general", "imbalance"]
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
ORGAN_ABBREV = {"spleen": "Sp", "right_kidney": "RK", "left_kidney": "LK", "gallbladder": "Ga", "esophagus": "Es",
                "liver": "Li", "stomach": "St", "aorta": "Ao", "inferior_vena_cava": "IVC", "pancreas": "Pa",
                "right_adrenal_gland": "RAG", "left_adrenal_gland": "LAG", "duodenum": "Du", "bladder": "Bl",
                "prostate_uterus": "P/U", "portal_splenic_veins": "PSV", "portal_splenic_vein": "PSV"}
REFERENCE_METHOD = "TAK"


@dataclass
class RenderedTable:
    """A study table: numbers (mean, std) per method and column, and its header facts."""

    metric: str
    mean: pd.DataFrame
    std: pd.DataFrame
    header: dict[str, str]
    groups: pd.Series
    higher_is_better: bool
    n: pd.Series = field(default_factory=lambda: pd.Series(dtype=int))  # seeds finished per row
    flagged: dict[str, str] = field(default_factory=dict)  # row -> why it is flagged (all-background predictions)


def method_labels(runs: pd.DataFrame) -> pd.Series:
    return runs["tags.method_title"].fillna(runs["tags.method"])


FLAG = "†"
NOT_MEANINGFUL = "n/m"


def all_background_flags(runs: pd.DataFrame, labels: pd.Series) -> dict[str, str]:
    """Rows with at least one test case predicted entirely as background, with a short reason."""
    column = "metrics.test/cases_all_background"
    if column not in runs:
        return {}
    flags = {}
    for label, count, total in zip(labels, runs[column], runs.get("tags.test_cases", [None] * len(runs))):
        if pd.notna(count) and count > 0:
            flags[label] = f"all-background prediction on {int(count)} of {total or '?'} test cases in a seed"
    return flags


def build_table(runs: pd.DataFrame, metric: str = "dice") -> RenderedTable:
    """Aggregate runs into a table for ``metric`` (``dice`` or ``asd``)."""
    organs = runs["tags.organs"].iloc[0].split(",")
    large = set(runs["tags.large_organs"].iloc[0].split(","))
    per_run = pd.DataFrame({o: runs[f"metrics.test/{metric}/{o}"] for o in organs})
    per_run.insert(0, "Small", per_run[[o for o in organs if o not in large]].mean(axis=1))
    per_run.insert(0, "Large", per_run[[o for o in organs if o in large]].mean(axis=1))
    per_run.insert(0, "All", per_run[organs].mean(axis=1))
    labels = method_labels(runs)
    per_run["method"] = labels.values
    grouped = per_run.groupby("method", sort=False)
    groups = runs.groupby(labels.values)["tags.method_group"].first()
    order = sorted(groups.index, key=lambda m: (GROUP_ORDER.index(groups[m]) if groups[m] in GROUP_ORDER else 99, m))
    mean, std = grouped.mean().loc[order], grouped.std(ddof=0).loc[order]
    seeds = sorted({int(s) for s in runs["tags.seed"]})
    commits = sorted({c[:10] for c in runs["tags.git_commit"].fillna("unknown")})
    dirty = (runs["tags.git_dirty"] == "true").any()
    kind = runs["tags.dataset_kind"].iloc[0]
    header = {"dataset": f"{runs['tags.dataset'].iloc[0]} ({kind.upper() if kind == 'synthetic' else kind})",
              "labeled ratio": runs["params.labeled_ratio"].iloc[0], "profile": runs["tags.profile"].iloc[0],
              "protocol": f"{runs['tags.protocol'].iloc[0]} (ASD {runs['tags.asd_direction'].iloc[0]}, "
                          f"{runs['tags.asd_units'].iloc[0]})",
              "seeds": ", ".join(map(str, seeds)), "commit": ", ".join(commits) + (" (dirty)" if dirty else ""),
              "model selection / augmentation / precision": _protocol_choices(runs),
              "computed on": _machines(runs),
              "test cases": runs["tags.test_cases"].iloc[0] + " of " + runs["tags.test_cases_total"].iloc[0]}
    n = grouped.size().loc[order]
    return RenderedTable(metric, mean, std, header, groups.loc[order], metric == "dice", n,
                         all_background_flags(runs, labels))


def _protocol_choices(runs: pd.DataFrame) -> str:
    """``last / none / fp32``, or per method where the methods differ (``reference`` rules)."""
    columns = ["tags.model_selection", "tags.augmentation", "tags.precision"]
    if not all(c in runs for c in columns):
        return "last / none / fp32 (runs before these were recorded)"
    combos = runs[columns].fillna("?").astype(str).agg(" / ".join, axis=1)
    if combos.nunique() == 1:
        return combos.iloc[0]
    by_method = dict(zip(method_labels(runs), combos))
    return "; ".join(f"{m}: {c}" for m, c in sorted(by_method.items()))


def _machines(runs: pd.DataFrame) -> str:
    """The machines the runs were trained on (``AVX2 CPU, 2 threads, torch 2.14.1``), per method
    where they differ: float results depend on the CPU kind and the thread count, so a table whose
    rows come from different machines says so."""
    columns = ["tags.accelerator", "tags.cpu_capability", "tags.torch_threads", "tags.torch_version"]
    if not all(c in runs for c in columns):
        return "not recorded (runs before the machine was recorded)"

    def describe(run: pd.Series) -> str:
        if run[columns].isna().any():
            return "not recorded"
        where = (run["tags.accelerator"] if run["tags.accelerator"] != "none"
                 else f"{run['tags.cpu_capability']} CPU, {run['tags.torch_threads']} "
                      + ("thread" if run["tags.torch_threads"] == "1" else "threads"))
        return f"{where}, torch {run['tags.torch_version']}"

    machines = runs.apply(describe, axis=1)
    if machines.nunique() == 1:
        return machines.iloc[0]
    by_method: dict[str, set[str]] = {}
    for method, machine in zip(method_labels(runs), machines):
        by_method.setdefault(method, set()).add(machine)
    return "; ".join(f"{m}: {' + '.join(sorted(v))}" for m, v in sorted(by_method.items()))


def ranks(table: RenderedTable) -> pd.DataFrame:
    """1 for the best and 2 for the second best value per column (ties share a rank; 0 otherwise).
    The worst value is never marked, so a column where one method is best and all others tie at
    the bottom (e.g. all 0) marks only the best. Flagged rows (all-background predictions) are
    never marked and do not take a rank from the others."""
    out = pd.DataFrame(0, index=table.mean.index, columns=table.mean.columns)
    eligible = table.mean.drop(index=[m for m in table.flagged if m in table.mean.index])
    for column in table.mean.columns:
        values = eligible[column].dropna().round(2)
        if values.nunique() < 2:  # nothing to single out
            continue
        dense = values.rank(method="dense", ascending=not table.higher_is_better).astype(int)
        worst = dense.max()
        for method, rank in dense.items():
            out.loc[method, column] = rank if rank <= 2 and rank < worst else 0
    return out


def _cell(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.2f}" if np.isnan(std) or std == 0 else f"{mean:.2f} ± {std:.2f}"


def to_frame(table: RenderedTable, style: str = "plain", stats: pd.DataFrame | None = None,
             seeds_asked: dict[str, int] | None = None) -> pd.DataFrame:
    """Formatted cells ``mean ± std``, best/second marked per ``style`` (plain, markdown, latex); a
    flagged row's label carries ``†`` and its ASD cells read ``n/m``."""
    marks = ranks(table)
    wrap = {"markdown": ("**{}**", "<u>{}</u>"), "latex": ("\\textbf{{{}}}", "\\underline{{{}}}"),
            "plain": ("{}", "{}")}[style]
    cells = pd.DataFrame(index=table.mean.index)
    for column in table.mean.columns:
        texts = []
        for method in table.mean.index:
            if table.metric == "asd" and method in table.flagged:
                texts.append(NOT_MEANINGFUL)
                continue
            text = _cell(table.mean.loc[method, column], table.std.loc[method, column])
            if style == "latex":
                text = text.replace("±", "$\\pm$")
            rank = marks.loc[method, column]
            texts.append(wrap[rank - 1].format(text) if rank else text)
        cells[column] = texts
    if stats is not None:
        cells.insert(1, "95% CI", [f"[{stats.loc[m, 'ci_low']:.2f}, {stats.loc[m, 'ci_high']:.2f}]"
                                   if m in stats.index and not np.isnan(stats.loc[m, "ci_low"]) else "-"
                                   for m in cells.index])
        cells.insert(2, f"p vs {stats.attrs.get('reference', '-')}",
                     [f"{stats.loc[m, 'p_value']:.3g}" if m in stats.index and not np.isnan(stats.loc[m, "p_value"])
                      else "-" for m in cells.index])
    asked = seeds_asked or {}
    if len(table.n):
        cells.insert(0, "n", [f"{table.n[m]}" + (f" of {asked[m]}" if asked.get(m, table.n[m]) != table.n[m] else "")
                              for m in cells.index])
    cells.insert(0, "Group", table.groups.values)
    cells.index = [f"{m} {FLAG}" if m in table.flagged else m for m in cells.index]
    cells.index.name = "Method"
    cells.columns = [ORGAN_ABBREV.get(c, c) for c in cells.columns]
    return cells


def flag_note(table: RenderedTable) -> list[str]:
    """Footnote lines for the flagged rows."""
    return [f"{FLAG} {m}: {why}; its ASD is not meaningful under the reference rule (an all-background prediction "
            f"scores ASD 0) and it is never marked best." for m, why in table.flagged.items()]


def _seeds_asked(selected: StudyRuns, runs: pd.DataFrame) -> dict[str, int]:
    labels = method_labels(runs)
    return {label: selected.seeds_asked(method) for label, method in zip(labels, runs["tags.method"])
            if selected.cells}


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
                       title: str = "", tracking_uri: str | None = None,
                       cells: list[dict[str, object]] | None = None) -> list[Path]:
    """Write ``<study>.md/.csv/.tex/.png`` (Dice and ASD) under ``out_dir``; returns the paths.

    ``cells``: the study's cells (method, seed, run key) as the harness resolves them; exactly
    their finished runs are shown, everything else in the experiment is listed in a footnote.
    """
    selected = study_runs(study, profile, cells, tracking_uri)
    runs = selected.runs
    dice, asd = build_table(runs, "dice"), build_table(runs, "asd")
    per_case = per_case_dice(runs, method_labels(runs))
    reference = REFERENCE_METHOD if REFERENCE_METHOD in dice.mean.index else str(dice.mean["All"].idxmax())
    stats = method_statistics(per_case, reference)
    stats.attrs["reference"] = reference
    asked = _seeds_asked(selected, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = pd.concat({"dice_percent": dice.mean, "dice_std": dice.std, "asd": asd.mean, "asd_std": asd.std}, axis=1)
    numbers[("dice_all_ci", "low")], numbers[("dice_all_ci", "high")] = stats["ci_low"], stats["ci_high"]
    numbers[("wilcoxon_p", f"vs {reference}")] = stats["p_value"]
    numbers[("seeds", "finished")] = dice.n
    numbers[("seeds", "asked")] = [asked.get(m, np.nan) for m in numbers.index]
    numbers[("flag", "all_background")] = [dice.flagged.get(m, "") for m in numbers.index]
    for m in dice.flagged:
        numbers.loc[m, "asd"] = np.nan  # not meaningful (see the flag)
    numbers.to_csv(out_dir / f"{study}.csv")
    synthetic = "SYNTHETIC" in dice.header["dataset"]
    note = (f"Bold: best, underlined: second best per column. n: seeds finished. 95% CI: bootstrap over test cases "
            f"of the mean per-case Dice; p: two-sided Wilcoxon signed-rank on per-case Dice against {reference}"
            f"{'' if reference == REFERENCE_METHOD else ' (TAK has no run yet; reference = best mean Dice)'}.")
    footnotes = flag_note(dice) + others_note(selected)
    md = [f"# {study}: {title}".rstrip(": "), "", *[f"- **{k}**: {v}" for k, v in dice.header.items()], ""]
    if synthetic:
        md += ["> Our numbers come from a **synthetic** cohort; they are not comparable with the published "
               "numbers on real data below.", ""]
    md += ["## Ours: Dice (%)", "", to_frame(dice, "markdown", stats, asked).to_markdown(), "", note, "",
           *[f"{line}\n" for line in footnotes],
           f"## Ours: ASD ({asd.header['protocol']})", "", to_frame(asd, "markdown", None, asked).to_markdown(), ""]
    published = published_panel(table_number) if table_number is not None else None
    if published is not None:
        md += [f"## Published (TAK paper, Table {table_number}, real data; reference only)", "",
               published.to_markdown(floatfmt=".2f"), ""]
    paths = [out_dir / f"{study}.md", out_dir / f"{study}.csv", out_dir / f"{study}.tex", out_dir / f"{study}.png"]
    paths[0].write_text("\n".join(md))
    paths[2].write_text(_latex(study, title, dice, asd, stats, published, " ".join([note, *footnotes])))
    _render_png(paths[3], study, title, dice, to_frame(dice, "plain", stats, asked), to_frame(asd, "plain", None, asked),
                ranks(dice), ranks(asd), published, footnotes)
    return paths


def _latex(study: str, title: str, dice: RenderedTable, asd: RenderedTable, stats: pd.DataFrame,
           published: pd.DataFrame | None, note: str) -> str:
    header = "; ".join(f"{k}: {v}" for k, v in dice.header.items()).replace("_", "\\_").replace("%", "\\%")
    parts = [f"% {study}: {title}", f"% {header}"]
    for caption, frame in ((f"Ours: Dice (\\%). {note.replace('%', chr(92) + '%')}", to_frame(dice, "latex", stats)),
                           ("Ours: ASD.", to_frame(asd, "latex"))):
        body = frame.to_latex(escape=False).replace("_", "\\_").replace("\\\\_", "\\_")
        parts += ["\\begin{table}[t]", "\\centering", "\\tiny", f"\\caption{{{caption} {header}}}", body, "\\end{table}"]
    if published is not None:
        parts += ["\\begin{table}[t]", "\\centering", "\\tiny",
                  "\\caption{Published numbers (TAK paper, real data; reference only, not comparable).}",
                  published.to_latex(float_format="%.2f").replace("_", "\\_"), "\\end{table}"]
    return "\n".join(parts) + "\n"


def _draw(ax: plt.Axes, frame: pd.DataFrame, title: str, color: str, marks: pd.DataFrame | None = None) -> None:
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold", color=color)
    cols = ["Method", *frame.columns]
    tab = ax.table(cellText=frame.reset_index().astype(str).values.tolist(), colLabels=cols, loc="upper left",
                   cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.auto_set_column_width(list(range(len(cols))))
    for (row, col), cell in tab.get_celld().items():
        if row == 0:
            cell.set_facecolor("#e6e6e6")
        elif marks is not None and 0 < col:
            name = ORGAN_REVERSE.get(cols[col], cols[col])
            if name in marks.columns:
                rank = marks.iloc[row - 1][name]
                if rank == 1:
                    cell.set_facecolor("#b7e1b0")
                    cell.get_text().set_fontweight("bold")
                elif rank == 2:
                    cell.set_facecolor("#e3f2df")


ORGAN_REVERSE = {v: k for k, v in ORGAN_ABBREV.items()}


def _render_png(path: Path, study: str, title: str, dice: RenderedTable, dice_cells: pd.DataFrame,
                asd_cells: pd.DataFrame, dice_marks: pd.DataFrame, asd_marks: pd.DataFrame,
                published: pd.DataFrame | None, footnotes: list[str] | None = None) -> None:
    panels = [(dice_cells, "Ours: Dice (%)  [dark green: best, light green: second]", "black", dice_marks),
              (asd_cells, f"Ours: ASD ({dice.header['protocol']}), lower is better", "black", asd_marks)]
    if published is not None:
        panels.append((published.round(2), "Published (TAK paper, REAL data, reference only; not comparable)",
                       "#8b0000", None))
    heights = [0.5 + 0.2 * (len(p[0]) + 1) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(17, 0.8 + sum(heights)), gridspec_kw={"height_ratios": heights})
    header = " | ".join(f"{k}: {v}" for k, v in dice.header.items())
    fig.suptitle(f"{study}: {title}\n{header}", fontsize=9, x=0.01, ha="left")
    for ax, (frame, panel_title, color, marks) in zip(np.atleast_1d(axes), panels):
        _draw(ax, frame, panel_title, color, marks)
    if footnotes:
        import textwrap
        text = "\n".join(textwrap.fill(line, 200) for line in footnotes)
        fig.text(0.01, 0.0, text, fontsize=7, ha="left", va="top")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
