"""Table 6: parameters and FLOPs from the cost study's MLflow runs, beside the published figures."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.queries import finished_runs  # noqa: E402
from reports.tables import PUBLISHED_DIR, method_labels  # noqa: E402

PUBLISHED_NAME = {"dhc": "DHC", "ga": "GA", "tak": "TAK"}  # our method -> the paper's row


def _column(runs: pd.DataFrame, name: str) -> pd.Series | float:
    """A metric column, NaN for runs logged before the metric existed."""
    return runs[name].values if name in runs else float("nan")


def render_cost_table(study: str, profile: str, out_dir: Path, title: str = "",
                      tracking_uri: str | None = None, cells: list[dict[str, object]] | None = None) -> list[Path]:
    """Write ``<study>.md/.csv/.tex/.png``: our counts, the published ones, and their agreement
    (``cells``: the cost study's cells, method / seed / run key)."""
    runs = finished_runs(study, profile, tracking_uri, cells=cells)
    ours = pd.DataFrame({
        "method": runs["tags.method"].values, "Method": method_labels(runs).values,
        "params (M, inference)": runs["metrics.cost/params_M"].values,
        "params (M, one net)": runs["metrics.cost/params_M_per_net"].values,
        "modules at inference": runs["metrics.cost/n_nets_infer"].astype(int).values,
        "GFLOPs (2 x MAC)": runs["metrics.cost/gflops_fwd_patch"].values,
        "GMACs": runs["metrics.cost/gmacs_fwd_patch"].values,
        "params (M, trained net)": _column(runs, "metrics.cost/params_M_trained_net"),
        "GFLOPs, all nets kept": _column(runs, "metrics.cost/gflops_fwd_all_nets"),
    }).sort_values("Method").set_index("Method")
    published = pd.read_csv(PUBLISHED_DIR / "table6_cost.csv").set_index("method")
    rows = []
    for method, label in PUBLISHED_NAME.items():
        if method in set(ours["method"]) and label in published.index:
            mine = ours[ours["method"] == method].iloc[0]
            rows.append({"Method": label, "published params (M)": published.loc[label, "params_M"],
                         "ours, trained net (M)": mine["params (M, trained net)"],
                         "params ratio": mine["params (M, trained net)"] / published.loc[label, "params_M"],
                         "published FLOPs (G)": published.loc[label, "flops_G"],
                         "ours, all nets kept (G)": mine["GFLOPs, all nets kept"],
                         "FLOPs ratio": mine["GFLOPs, all nets kept"] / published.loc[label, "flops_G"]})
    agreement = pd.DataFrame(rows).set_index("Method") if rows else pd.DataFrame()
    shape = runs["tags.input_shape"].iloc[0]
    convention = (f"FLOPs: torch.utils.flop_counter (2 FLOPs per multiply-add) on one {shape} window; "
                  f"'GFLOPs (2 x MAC)' is one predict() (the networks used at inference), 'all nets kept' one "
                  f"segmentation forward of every network the method keeps (co-training: both; mean teacher: "
                  f"student and EMA teacher). Params: 'inference' sums the modules predict() runs; 'trained net' is "
                  f"the largest network that receives gradient, with every head it trains (MagicNet/GA/TAK: student + "
                  f"location head). The published figures are reproduced by 'trained net' params and 'all nets kept' "
                  f"FLOPs (DHC 37.8 M / 566.76 G, GA 18.0 M / 143.40 G).")
    out_dir.mkdir(parents=True, exist_ok=True)
    ours.drop(columns="method").to_csv(out_dir / f"{study}.csv")
    md = [f"# {study}: {title}", "", f"- **profile**: {profile}", f"- **input**: {shape}", f"- **convention**: {convention}",
          "", "## Ours", "", ours.drop(columns="method").to_markdown(floatfmt=".2f"), "",
          "## Published (TAK paper, Table 6; counting tool not stated)", "", published.to_markdown(floatfmt=".2f"), ""]
    if not agreement.empty:
        md += ["## Agreement with the published figures", "", agreement.to_markdown(floatfmt=".3f"), ""]
    paths = [out_dir / f"{study}.md", out_dir / f"{study}.csv", out_dir / f"{study}.tex", out_dir / f"{study}.png"]
    paths[0].write_text("\n".join(md))
    tex = [f"% {study}: {title}; {convention}", ours.drop(columns="method").to_latex(float_format="%.2f"),
           published.to_latex(float_format="%.2f")]
    paths[2].write_text("\n".join(t.replace("_", "\\_") if not t.startswith("%") else t for t in tex))
    fig, axes = plt.subplots(2, 1, figsize=(11, 1.6 + 0.25 * (len(ours) + len(published) + 4)))
    for ax, frame, heading, colour in ((axes[0], ours.drop(columns="method").round(2), f"Ours ({profile} profile, {shape})", "black"),
                                       (axes[1], published, "Published (TAK paper; reference only)", "#8b0000")):
        ax.axis("off")
        ax.set_title(heading, loc="left", fontsize=10, fontweight="bold", color=colour)
        table = ax.table(cellText=frame.reset_index().astype(str).values.tolist(),
                         colLabels=[frame.index.name or "method", *frame.columns], loc="upper left", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.auto_set_column_width(list(range(len(frame.columns) + 1)))
    fig.suptitle(f"{study}: {title}", x=0.01, ha="left", fontsize=10)
    fig.savefig(paths[3], dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths
