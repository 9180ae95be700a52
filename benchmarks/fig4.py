"""What the paper's Fig. 4 (qualitative comparison) shows, gathered from a study's finished runs.

Rules:
1. The cases: by default the median and the worst test case of the small organs (mean Dice over
   the dataset's small organs, per case, from the reference method's ``eval/per_case.csv``; TAK, else
   the first method with a run); ``cases`` names others.
2. The slice: the axial slice (z) with the most small-organ voxels in the ground truth.
3. A method's label map: the evaluation's saved prediction (``predictions/<case>.nii.gz``) where the
   profile kept them, else predicted again from the training's logged weights (the same sliding window).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from benchmarks.config import Profile, Study
from benchmarks.data import Case, read_case
from benchmarks.errors import ConfigError
from benchmarks.evaluation import predict_case
from benchmarks.plan import StudyPlan
from benchmarks.weights import load_trained


@dataclass
class Fig4Panel:
    """One case: its axial slice ``z`` of the image, the ground truth and each method's prediction
    (``(X, Y)`` arrays), and why it was chosen."""

    case_id: str
    why: str
    z: int
    image: np.ndarray
    truth: np.ndarray
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Fig4Data:
    study: str
    profile: str
    synthetic: bool
    class_names: tuple[str, ...]
    reference: str
    panels: list[Fig4Panel]


def _artifact(client: MlflowClient, run_id: str, path: str, tmp: str) -> Path:
    return Path(client.download_artifacts(run_id, path, tmp))


def choose_cases(per_case: pd.DataFrame, small_organs: list[str]) -> list[tuple[str, str]]:
    """Rule 1: ``[(median case, reason), (worst case, reason)]`` by mean small-organ Dice.

    >>> frame = pd.DataFrame({"case_id": ["a", "a", "b", "b", "c", "c"], "organ": ["x", "y"] * 3,
    ...                       "dice": [90, 10, 50, 50, 0, 20]})
    >>> choose_cases(frame, ["x"])
    [('b', 'median small-organ Dice 50.0'), ('c', 'worst small-organ Dice 0.0')]
    """
    scores = per_case[per_case["organ"].isin(small_organs)].groupby("case_id", sort=True)["dice"].mean().sort_values(
        kind="stable")
    if scores.empty:
        raise ConfigError("fig4: the reference run's per-case table has no small organ")
    median_id = scores.index[(len(scores) - 1) // 2]
    worst_id = scores.index[0]
    return [(median_id, f"median small-organ Dice {scores[median_id]:.1f}"),
            (worst_id, f"worst small-organ Dice {scores[worst_id]:.1f}")]


def best_slice(label: np.ndarray, small_ids: list[int]) -> int:
    """Rule 2: the z index with the most small-organ voxels (any foreground if there is none)."""
    counts = np.isin(label, small_ids).sum(axis=(0, 1))
    if counts.max() == 0:
        counts = (label > 0).sum(axis=(0, 1))
    return int(np.argmax(counts))


def _prediction(client: MlflowClient, run: Run, case: Case, profile: Profile, tmp: str,
                models: dict[str, object]) -> np.ndarray:
    """Rule 3."""
    if run.data.tags.get("predictions") == "logged":
        path = _artifact(client, run.info.run_id, f"predictions/{case.case_id}.nii.gz", tmp)
        return np.asarray(nib.load(str(path)).dataobj).astype(np.uint8)
    source = run.data.tags.get("training_run_id", run.info.run_id)
    if source not in models:
        models[source] = load_trained(client, source, profile.device).method
    return predict_case(models[source], case, profile.patch, profile.eval_stride)


def gather_fig4(study: Study, profile: Profile, data_dir: str | None = None, reference: str = "tak",
                cases: list[str] | None = None) -> Fig4Data:
    """Rules 1-3 for the first seed of ``study``'s cells under ``profile``."""
    plan = StudyPlan(study, profile, data_dir=data_dir, progress=False)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(study.experiment_name)
    runs: dict[str, Run] = {}
    for cell in plan.study_cells():
        if cell.seed != plan.study_seeds[0] or experiment is None or cell.method in runs:
            continue
        found = client.search_runs([experiment.experiment_id], f"tags.run_key = '{cell.run_key}' and "
                                   "attributes.status = 'FINISHED'", max_results=1)
        if found:
            runs[cell.method] = found[0]
    if not runs:
        raise ConfigError(f"fig4: study {study.study!r} has no finished run under profile {profile.name!r}; "
                          f"run `python -m benchmarks run {study.study} --profile {profile.name}` first")
    ref = reference if reference in runs else next(iter(runs))
    info = plan.dataset
    small = [o for o in info.organs if o not in info.large_organs]
    small_ids = [info.class_names.index(o) for o in small]
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        per_case = pd.read_csv(_artifact(client, runs[ref].info.run_id, "eval/per_case.csv", tmp))
        chosen = [(c, "named") for c in cases] if cases else choose_cases(per_case, small)
        models: dict[str, object] = {}
        for case_id, why in chosen:
            if case_id not in plan.test_ids():
                raise ConfigError(f"fig4: {case_id!r} is not an evaluated test case of {study.study!r}")
            case = read_case(info, case_id)
            z = best_slice(case.label, small_ids)
            panel = Fig4Panel(case_id, why, z, case.image[:, :, z], case.label[:, :, z])
            for method, run in runs.items():
                title = run.data.tags.get("method_title", method)
                panel.predictions[title] = _prediction(client, run, case, profile, tmp, models)[:, :, z]
            panels.append(panel)
    return Fig4Data(study.study, profile.name, info.synthetic, info.class_names,
                    runs[ref].data.tags.get("method_title", ref), panels)
