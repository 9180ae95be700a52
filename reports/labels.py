"""Point labels placed without overlap (Fig. 1, Fig. 6): each label takes the first of a ring of
candidate offsets around its point whose box overlaps no label placed before it, the farther ones
with a leader line back to the point. Call it after the axes' limits, scales and layout are final."""
from __future__ import annotations

from typing import Any, Sequence

from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

# Offsets in points (x, y), nearest first: beside, above and below the point, then farther out.
_RING = [(8, 6), (8, -14), (-8, 6), (-8, -14), (0, 14), (0, -22)]
CANDIDATES = [(dx * k, dy * k) for k in (1, 2, 3, 4, 5) for dx, dy in _RING]


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 fontsize: float = 8) -> list[Annotation]:
    """Annotate each ``(x, y)`` (data coordinates) with its text so that no two label boxes overlap
    (up to the ring's 30 candidates per label; the last candidate is kept if all collide)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list[Bbox] = []
    labels = []
    for x, y, text in zip(xs, ys, texts):
        for n, (dx, dy) in enumerate(CANDIDATES):
            far = n >= len(_RING)
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                                va="bottom" if dy > 0 else "top",
                                arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6} if far else None)
            box = label.get_window_extent(renderer).padded(1)
            if not any(box.overlaps(other) for other in placed) or n == len(CANDIDATES) - 1:
                placed.append(box)
                labels.append(label)
                break
            label.remove()
    return labels


def label_boxes(labels: Sequence[Annotation]) -> list[Bbox]:
    """The display boxes of placed labels (for checking them)."""
    renderer = labels[0].figure.canvas.get_renderer() if labels else None
    return [label.get_window_extent(renderer) for label in labels]
