"""``python -m benchmarks``: list methods, run studies, render reports, generate data."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.config import PROJECT_ROOT, load_profile, load_study
from benchmarks.errors import OrganbenchError
from methods.registry import UnknownMethodError
from reports.queries import NoRunsError

REPORT_TABLES = {"table1": 1, "table2": 2, "table3": 3, "table4": 4}


def _csv(value: str | None, cast: type = str) -> list | None:
    if value is None or value.strip() == "":
        return None
    return [cast(v.strip()) for v in value.split(",") if v.strip()]


def cmd_list_methods(args: argparse.Namespace) -> int:
    from methods import get_method, list_methods
    for name in list_methods():
        cls = get_method(name)
        print(f"{name:16s} {cls.group:12s} {cls.title}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.runner import StudyRunner
    study, profile = load_study(args.study), load_profile(args.profile)
    runner = StudyRunner(study, profile, _csv(args.methods), _csv(args.seeds, int), args.data,
                         progress=not args.no_progress)
    results = runner.run()
    trained = sum(not r["skipped"] for r in results)
    print(f"{study.study} [{profile.name}]: {trained} run(s) trained, {len(results) - trained} already finished")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchmarks.tracking import setup_tracking
    from reports.tables import render_dice_tables
    study = load_study(args.study)
    setup_tracking()
    out = Path(args.out) if args.out else PROJECT_ROOT / "reports" / "out" / study.study
    paths = render_dice_tables(study.study, args.profile, out, REPORT_TABLES.get(study.study), study.title)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from benchmarks.data.sources import resolve_dataset
    info = resolve_dataset(args.dataset, load_profile(args.profile))
    print(f"{info.name}: {info.root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list-methods", help="registered methods").set_defaults(func=cmd_list_methods)
    run = sub.add_parser("run", help="train and evaluate the cells of a study")
    run.add_argument("study", help="study name (benchmarks/studies/NAME.yaml) or path")
    run.add_argument("--profile", default="cpu")
    run.add_argument("--methods", help="comma-separated subset (default: the study's)")
    run.add_argument("--seeds", help="comma-separated seeds (default: the study's for the profile)")
    run.add_argument("--data", help="a prepared dataset folder (overrides the profile's data)")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="render a study's tables from MLflow")
    report.add_argument("study")
    report.add_argument("--profile", default="cpu")
    report.add_argument("--out", help="output folder (default reports/out/STUDY)")
    report.set_defaults(func=cmd_report)
    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="generate the synthetic cohort a profile uses")
    gen.add_argument("dataset", nargs="?", default="amos")
    gen.add_argument("--profile", default="cpu")
    gen.set_defaults(func=cmd_data_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OrganbenchError, UnknownMethodError, NoRunsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
