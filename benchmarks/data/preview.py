"""Axial and coronal slices of a CT with its label overlay (a quick look at a dataset)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

ORGAN_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
                 "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3"]


def _display(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient ``(X, Y, Z)`` so that axial slices show the patient's right on the image's left,
    anterior at the top, and coronal slices superior at the top (radiological convention)."""
    import nibabel as nib
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt(("L", "P", "S")))
    return nib.orientations.apply_orientation(volume, ornt)


def render_preview(cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], class_names: Sequence[str],
                   path: Path, title: str, window: tuple[float, float] = (-160.0, 240.0)) -> Path:
    """One row per case: axial (image, overlay) and coronal (image, overlay) through the organs' centre.

    Args:
        cases: ``(case_id, image HU (X,Y,Z), label (X,Y,Z), affine)``.
    """
    fig, axes = plt.subplots(len(cases), 4, figsize=(13, 3.3 * len(cases)), squeeze=False)
    cmap = ListedColormap(ORGAN_COLOURS[: len(class_names) - 1])
    for row, (case_id, image, label, affine) in zip(axes, cases):
        image, label = _display(image, affine), _display(label, affine)
        where = np.argwhere(label > 0)  # slices through the centre of all organs
        _, cy, cz = where.mean(0).astype(int) if len(where) else np.array(label.shape) // 2
        views = {"axial": (image[:, :, cz].T, label[:, :, cz].T), "coronal": (image[:, cy, :].T[::-1], label[:, cy, :].T[::-1])}
        for col, (name, (img, lab)) in enumerate(views.items()):
            for k, overlay in enumerate((False, True)):
                ax = row[2 * col + k]
                ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
                if overlay:
                    ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=1, vmax=len(class_names) - 1,
                              alpha=0.55, interpolation="nearest")
                ax.set_title(f"{case_id} {name}{' + labels' if overlay else ''}", fontsize=8)
                ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=ORGAN_COLOURS[i]) for i in range(len(class_names) - 1)]
    fig.legend(handles, class_names[1:], loc="lower center", ncol=8, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
