"""Small pieces of a run's record shared by the stages: launch output, the environment, the loss curve."""
from __future__ import annotations

import functools
import importlib.metadata
import json
import sys
from typing import Any

from tqdm import tqdm

from benchmarks.cost import FLOPS_CONVENTION
from benchmarks.plan import Cell, StudyPlan
from benchmarks.tracking import git_state
from benchmarks.training import compute_environment


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


def cell_tags(cell: Cell, plan: StudyPlan) -> dict[str, str]:
    """Every protocol choice of a cell and the machine it trains on, as MLflow tags (mutable, searchable)."""
    cls, info, study = plan.method_classes[cell.method], plan.dataset, cell.study
    in_splits = set(info.mri_cases) & {i for ids in plan.splits.values() for i in ids}
    variant = {"base_method": cls.name, "variant_value": json.dumps(study.variants[cell.method].get("value"))
               } if cell.method in study.variants else {}
    return {"run_key": cell.run_key, "training_key": cell.training_key, "study": study.experiment_name,
            "method": cell.method, **variant, "method_group": cls.group, "method_title": cls.title,
            "method_version": cls.version, "iterations": str(cell.iterations), "batch_policy": cls.batch_policy,
            "seed": str(cell.seed), "profile": cell.profile.name, "dataset": info.name,
            "dataset_kind": "synthetic" if info.synthetic else "real", "data_digest": cell.data_digest,
            "split_sha256": cell.split_sha, "split_variant": study.split_variant or "published",
            "mri_cases_in_splits": str(len(in_splits)), "organs": ",".join(info.organs),
            "large_organs": ",".join(info.large_organs), "model_selection": cell.selection.name,
            "augmentation": cell.augmentation, "precision": cell.profile.precision,
            "lr_scale": f"{cell.profile.lr_scale:g}", "warmup_fraction": f"{cell.profile.warmup_fraction:g}",
            "hold_fraction": f"{cell.profile.hold_fraction:g}",
            "eval_grid": "dataset_grid", "sw_mode": "constant(uniform average of softmax)",
            "sw_stride": str(list(cell.profile.eval_stride)), "flops_convention": FLOPS_CONVENTION,
            **plan.protocol.tags(), **git_state(), **compute_environment(cell.profile.device)}


def log_dataset_input(client: Any, run_id: str, cell: Cell, plan: StudyPlan) -> None:
    """The cell's data as the run's MLflow dataset input (the UI's Dataset column): the dataset, its
    digest (cases and definition), folder, class map and split sizes, in the ``training`` context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    info = plan.dataset
    kind = "synthetic" if info.synthetic else "real"
    dataset = Dataset(name=info.name, digest=cell.data_digest[:16], source_type="local",
                      source=json.dumps({"uri": str(info.root)}),
                      schema=json.dumps({"classes": list(info.class_names)}),
                      profile=json.dumps({"kind": kind, **{name: len(ids) for name, ids in plan.splits.items()}}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
