"""The evaluation stage of a cell: score a trained method on the test cases under the study's metric
protocol and log the summary, the per-case table, the cost and (where the profile keeps them) the
test predictions as compressed NIfTI label maps (``predictions/<case>.nii.gz``, uint8)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.data import Case
from benchmarks.cost import forward_gflops, params_millions
from benchmarks.evaluation import case_predictions, summarize, tidy_metrics
from benchmarks.inference import window_count
from benchmarks.plan import Cell
from benchmarks.tracking import RunLog
from benchmarks.train_stage import CellContext, Trained


def save_predictions(log: RunLog, predictions: list[np.ndarray], cases: list[Case]) -> None:
    """Each case's ``(X, Y, Z)`` labels as ``predictions/<case>.nii.gz`` (the case's spacing, uint8)."""
    with tempfile.TemporaryDirectory() as tmp:
        for case, labels in zip(cases, predictions):
            affine = np.diag([*case.spacing, 1.0])
            nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(Path(tmp) / f"{case.case_id}.nii.gz"))
        log.client.log_artifacts(log.run_id, tmp, "predictions")


def evaluate_cell(cell: Cell, ctx: CellContext, log: RunLog, trained: Trained) -> dict[str, float]:
    """Score ``trained`` on the plan's test cases and log everything; returns the summary metrics."""
    plan, profile = ctx.plan, cell.profile
    test_ids = plan.test_ids()
    if ctx.on_progress is not None:
        ctx.on_progress(cell.run_key, "evaluation", cell.iterations, cell.iterations)
    start = time.time()
    cases = ctx.cases(test_ids)
    predictions = case_predictions(trained.method, cases, profile.patch, profile.eval_stride, ctx.progress,
                                   f"{cell.name} evaluation")
    per_case = tidy_metrics(predictions, cases, plan.dataset, plan.protocol)
    eval_time = time.time() - start
    summary = summarize(per_case, plan.dataset)
    log.text(per_case.to_csv(index=False), "eval/per_case.csv")
    if profile.save_predictions:
        save_predictions(log, predictions, cases)
    log.tags({"test_cases": str(len(test_ids)), "test_cases_total": str(len(plan.splits["test"])),
              "windows_per_case": str(window_count(cases[0].image.shape, profile.patch, profile.eval_stride)),
              "predictions": "logged" if profile.save_predictions else "not kept (profile)"})
    method = trained.method
    cost = {"cost/params_M": params_millions(method), "cost/gflops_fwd_patch": forward_gflops(method, profile.patch),
            "cost/train_time_s": trained.train_time_s,
            "cost/train_step_s": trained.train_time_s / max(cell.iterations, 1), "cost/eval_time_s": eval_time}
    log.metrics({**summary, **cost})
    return summary
