"""Figure labels never overlap (issue 31: Fig. 6 had DePL / Adsh / CPS and Mean Teacher / UA-MT on top
of each other, Fig. 1 IVC / Ao and RAG / Es)."""
from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.labels import label_boxes, place_labels  # noqa: E402

FIG6_LIKE = {  # method: (GFLOPs, Dice), the crowded corner of the cpu Fig. 6
    "DePL (1.2 M)": (10.0, 8.0), "Adsh (1.2 M)": (10.0, 8.2), "CPS (2.4 M)": (10.2, 8.2),
    "Mean Teacher (1.2 M)": (10.0, 11.1), "UA-MT (1.2 M)": (10.0, 10.3), "Basak (1.2 M)": (10.1, 9.4),
    "DeSCO (2.4 M)": (20.0, 8.7), "Co-BioNet (2.4 M)": (20.1, 6.6), "V-Net (labeled only) (1.2 M)": (10.0, 12.0),
    "V-Net (fully) (1.2 M)": (10.0, 8.1)}
FIG1_LIKE = {"IVC +1.2": (0.9, 1.6), "Ao +0.4": (0.92, 1.605), "RAG -2.0": (0.05, 1.9), "Es +3.1": (0.051, 1.899),
             "LAG +0.0": (0.05, 1.8), "GB +2.2": (0.6, 1.5)}


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if a.overlaps(b)]


def _figure(points: dict[str, tuple[float, float]], log_x: bool):
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs, ys = zip(*points.values())
    ax.scatter(xs, ys)
    if log_x:
        ax.set_xscale("log")
    fig.tight_layout()
    return fig, ax, xs, ys


def test_crowded_points_get_labels_that_do_not_overlap() -> None:
    for points, log_x in ((FIG6_LIKE, False), (FIG1_LIKE, True)):
        fig, ax, xs, ys = _figure(points, log_x)
        naive = [ax.annotate(t, (x, y), textcoords="offset points", xytext=(8, 6), fontsize=8)
                 for t, x, y in zip(points, xs, ys)]
        fig.canvas.draw()
        assert _overlaps(label_boxes(naive))  # the old placement collides on these points
        for label in naive:
            label.remove()
        placed = place_labels(ax, xs, ys, list(points))
        fig.canvas.draw()
        assert len(placed) == len(points) and _overlaps(label_boxes(placed)) == []
        assert [p.get_text() for p in placed] == list(points)
        plt.close(fig)
