"""Fig. 4: the same axial slices segmented by every method, ground truth beside (one colour per organ).

Draws what :func:`benchmarks.fig4.gather_fig4` collected (arrays only: this module reads no data files
and builds no network)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

MAX_COLUMNS = 10  # tiles per row; a case with more methods wraps onto further rows


def organ_colours(num_classes: int) -> ListedColormap:
    """Background transparent, then one distinct colour per organ (tab20, in label order)."""
    colours = [(0, 0, 0, 0)] + [plt.get_cmap("tab20")(i % 20) for i in range(num_classes - 1)]
    return ListedColormap(colours)


def _show(ax: Any, image: np.ndarray, labels: np.ndarray | None, cmap: ListedColormap, title: str) -> None:
    ax.imshow(np.rot90(image), cmap="gray", vmin=0, vmax=1)
    if labels is not None:
        ax.imshow(np.rot90(labels), cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.65, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def render_fig4(data: Any, out_dir: Path) -> Path:
    """``fig4.png`` (per case: image, ground truth, one tile per method, wrapped at ``MAX_COLUMNS``) and ``fig4.csv``
    (the cases, why each was chosen, its slice) in ``out_dir``; returns the PNG's path."""
    methods = list(data.panels[0].predictions)
    tiles = 2 + len(methods)  # image, ground truth, one per method
    cols = min(MAX_COLUMNS, tiles)
    rows_per_case = -(-tiles // cols)
    cmap = organ_colours(len(data.class_names))
    fig, axes = plt.subplots(rows_per_case * len(data.panels), cols,
                             figsize=(max(1.6 * cols, 7.0), 1.9 * rows_per_case * len(data.panels) + 1.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, panel in enumerate(data.panels):
        grid = axes[index * rows_per_case:(index + 1) * rows_per_case].flat
        _show(next(grid), panel.image, None, cmap, f"{panel.case_id} z={panel.z}\n{panel.why}")
        _show(next(grid), panel.image, panel.truth, cmap, "ground truth")
        for ax, method in zip(grid, methods):
            _show(ax, panel.image, panel.predictions[method], cmap, method)
    handles = [Patch(color=cmap(i), label=name) for i, name in enumerate(data.class_names) if i > 0]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=6, frameon=False)
    kind = "SYNTHETIC data" if data.synthetic else "real data"
    fig.suptitle(f"Fig. 4 ({data.study}, {data.profile} profile, {kind}): cases chosen by {data.reference}",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 0.95), h_pad=1.5)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "fig4.png"
    fig.savefig(path, dpi=150)
    plt.close(fig)
    pd.DataFrame([{"case_id": p.case_id, "why": p.why, "z": p.z, "methods": ";".join(methods)}
                  for p in data.panels]).to_csv(out_dir / "fig4.csv", index=False)
    return path
