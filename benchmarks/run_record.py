"""Small pieces of a run's record shared by the stages: launch output, the environment, the loss curve."""
from __future__ import annotations

import functools
import importlib.metadata
import sys
from typing import Any

from tqdm import tqdm


def say(line: str) -> None:
    """One line of launch output, printed above the progress bars (stdout, flushed)."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


@functools.lru_cache(maxsize=1)
def pip_freeze() -> str:
    """``name==version`` of every installed distribution (logged with each run)."""
    return "\n".join(sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()})) + "\n"


def training_curve_figure(curve: list[dict[str, float]], title: str) -> Any:
    """Losses (and loss weights) against the iteration, one line per logged key (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [k for k in curve[0] if k not in ("step", "lr")] if curve else []
    for key in keys:
        ax.plot([c["step"] for c in curve], [c[key] for c in curve], label=key)
    ax.set_xlabel("iteration")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig
