"""``python -m benchmarks evaluate`` and ``predict``: use finished trainings without training again.

``evaluate STUDY --profile P [--protocol NAME]`` scores every cell of the study whose training exists
in the store (any study: trainings are found by training key) under the study's or the named metric
protocol, as evaluation runs in the study's experiment; cells without a training are listed, never
trained. ``report STUDY --protocol NAME`` then renders them.

``predict RUN_ID --in scan.nii.gz --out seg.nii.gz`` applies a finished training (or the training
behind an evaluation run) to new volumes (:mod:`benchmarks.predict`).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from benchmarks.cli_values import add_cell_arguments, csv_list, seed_list
from benchmarks.config import load_profile, load_study
from benchmarks.errors import ConfigError


def with_protocol(study, protocol: str | None):
    """``study`` scored under ``protocol`` (None: its own)."""
    return study if protocol is None else dataclasses.replace(study, protocol=protocol)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from benchmarks.runner import StudyRunner
    study = with_protocol(load_study(args.study), args.protocol)
    profile = load_profile(args.profile)
    runner = StudyRunner(study, profile, csv_list(args.methods), seed_list(args.seeds), args.data,
                         progress=not args.no_progress, evaluate_only=True)
    results = runner.run()
    evaluated = sum(r["status"] == "trained" for r in results)
    already = sum(r["status"] == "finished" for r in results)
    print(f"{study.study} [{profile.name}] protocol {study.protocol}: {evaluated} evaluation(s) recorded, "
          f"{already} already recorded, {len(runner.untrained)} cell(s) without a training")
    return 2 if any(r["status"] == "failed" for r in results) else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from benchmarks.predict import predict_file
    from benchmarks.tracking import setup_tracking
    from benchmarks.weights import load_trained
    sources, targets = [Path(p) for p in args.inputs], [Path(p) for p in args.outputs]
    if len(sources) != len(targets):
        raise ConfigError(f"predict: {len(sources)} --in file(s) but {len(targets)} --out file(s)")
    for source, target in zip(sources, targets):
        if target.resolve() == source.resolve():
            raise ConfigError(f"{target}: --out would overwrite its --in scan")
        if target.exists() and not args.overwrite:
            raise ConfigError(f"{target}: exists (pass --overwrite to replace it)")
    client = MlflowClient(setup_tracking(None))
    try:
        model = load_trained(client, args.run_id, args.device)
    except MlflowException as exc:
        raise ConfigError(f"run {args.run_id}: {exc.message.splitlines()[0]}") from None
    for source, target in zip(sources, targets):
        written = predict_file(model, source, target)
        print(f"{source} -> {written.path}: {model.record['method']} (run {model.run_id}), shape "
              f"{list(written.shape)}, classes {written.classes}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` and ``predict`` sub-commands."""
    ev = sub.add_parser("evaluate", help="score finished trainings of a study (optionally under another metric "
                        "protocol) without training")
    ev.add_argument("study")
    ev.add_argument("--protocol", help="metric protocol (default: the study's)")
    add_cell_arguments(ev, "the prepared dataset folder the trainings used")
    ev.set_defaults(func=cmd_evaluate)
    pr = sub.add_parser("predict", help="apply a finished training to NIfTI volumes")
    pr.add_argument("run_id", help="a training run (or an evaluation run; its training is used)")
    pr.add_argument("--in", dest="inputs", nargs="+", required=True, help="input NIfTI volume(s)")
    pr.add_argument("--out", dest="outputs", nargs="+", required=True, help="output label map(s), one per --in")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--overwrite", action="store_true", help="replace existing output files")
    pr.set_defaults(func=cmd_predict)
