"""``python -m benchmarks``: list methods, run studies, render reports, generate data."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from benchmarks import model_cli, tak_cli
from benchmarks.cli_values import csv_list as _csv
from benchmarks.config import PROJECT_ROOT, load_profile, load_study, study_path
from benchmarks.errors import ConfigError, DatasetError, OrganbenchError
from benchmarks.interrupt import Interrupted
from benchmarks.run_cli import add_run_parser
from methods.common.urls import redact_urls
from methods.registry import UnknownMethodError
from mlflow_server.server import ServerError
from reports.errors import NoRunsError  # not reports.queries: gpu-check runs without MLflow

REPORT_TABLES = {"table1": 1, "table2": 2, "table3": 3, "table4": 4}


def cmd_list_methods(args: argparse.Namespace) -> int:
    from methods import get_method, list_methods
    for name in list_methods():
        cls = get_method(name)
        print(f"{name:16s} {cls.group:12s} {cls.title}")
    return 0


def cmd_new_method(args: argparse.Namespace) -> int:
    from benchmarks.new_method import create_method
    for path in create_method(args.name, args.title):
        print(f"wrote {path}")
    print(f"next: edit the loss in methods/{args.name}.py, then `make test` and "
          f"`python -m benchmarks run table2 --profile smoke --methods {args.name}`")
    return 0


def study_cells(study, profile, data_dir: str | None = None,
                extra_methods: list[str] | None = None) -> list[dict[str, object]]:
    """The study's own cells under ``profile`` (method, seed, run key): what its tables show, plus the
    cells of ``extra_methods`` at the study's seeds (``report --methods``: e.g. a method just added)."""
    if study.kind == "cost":
        from benchmarks.cost_study import cost_cells
        return [{k: c[k] for k in ("method", "seed", "run_key")} for c in cost_cells(study, profile)]
    from benchmarks.plan import StudyPlan
    try:
        plan = StudyPlan(study, profile, methods=extra_methods, data_dir=data_dir, progress=False)
    except DatasetError as exc:
        raise DatasetError(f"cannot resolve the cells of study {study.study!r} without its data ({exc}); pass "
                           "--data with the folder the runs used") from None
    cells = plan.study_cells() + ([c for c in plan.cells() if c.method not in study.methods] if extra_methods else [])
    return [{"method": c.method, "seed": str(c.seed), "run_key": c.run_key, "iterations": c.iterations}
            for c in cells]


def output_folder(path: Path) -> Path:
    """``path`` as a folder to write into, checked before anything is rendered: a file in its place or in
    the way of its parents, or no permission to create or write it, is a one-line ConfigError. Nothing
    is created here (the renderer creates the folder when it writes), so a report that fails leaves
    no empty folder behind."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is a file, not a folder for the report (pass --out FOLDER)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{path}: cannot create the report folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "the report folder is not writable" if existing == path else \
            f"cannot create the report folder ({existing} is not writable)"
        raise ConfigError(f"{path}: {reason}")
    return path


def cmd_report(args: argparse.Namespace) -> int:
    study_path(args.study)  # an unknown study or profile name is refused before MLflow and torch load
    profile = load_profile(args.profile)
    study = model_cli.with_protocol(load_study(args.study), args.protocol)
    from benchmarks.tracking import setup_tracking
    from reports.tables import render_dice_tables
    cells = study_cells(study, profile, args.data, _csv(args.methods))
    setup_tracking()
    out = output_folder(Path(args.out) if args.out else PROJECT_ROOT / "reports" / "out" / study.study)
    if study.kind == "cost":
        from reports.cost import render_cost_table
        paths = render_cost_table(study.study, args.profile, out, study.title, cells=cells)
    elif study.experiment and study.experiment != study.study and not study.budget_scales:
        raise ConfigError(f"{study.path}: experiment {study.experiment!r}: only budget studies share another "
                          "study's experiment")
    elif study.variants:
        from benchmarks.plan import absent_inputs
        from reports.ablation import render_ablation
        paths = render_ablation(study, args.profile, out, cells=cells, absent=absent_inputs(study))
    elif study.budget_scales:
        from reports.budget import render_budget_check
        budget = int(study.budget[profile.name])
        paths = render_budget_check(study.experiment_name, args.profile, out, budget, study.title, cells=cells,
                                    name=study.study)
    else:
        paths = render_dice_tables(study.experiment_name, args.profile, out, REPORT_TABLES.get(study.study), study.title,
                                   cells=cells)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from benchmarks.tracking import setup_tracking
    from reports.figures import render_fig1, render_fig6
    cells = study_cells(load_study(args.study), load_profile(args.profile), args.data)
    setup_tracking()
    out = output_folder(Path(args.out) if args.out else PROJECT_ROOT / "reports" / "out" / args.name)
    if args.name == "fig4":
        from benchmarks.fig4 import gather_fig4
        from reports.fig4 import render_fig4
        data = gather_fig4(load_study(args.study), load_profile(args.profile), args.data, args.reference,
                           _csv(args.cases))
        print(f"wrote {render_fig4(data, out)}")
        return 0
    if args.name == "curves":
        from reports.curves import render_curves
        print(f"wrote {render_curves(args.study, args.profile, out, args.metric, cells=cells)}")
        return 0
    render = {"fig1": render_fig1, "fig6": render_fig6}[args.name]
    print(f"wrote {render(args.study, args.profile, out, cells=cells)}")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from benchmarks.gpu_check import gpu_check, write_report
    out = Path(args.out) if args.out else None

    def on_row(so_far: dict) -> None:
        row = so_far["methods"][-1]
        if "error" in row:
            print(f"{row['method']:12s} ERROR {row['error']}", flush=True)
        else:
            memory = f"{row['peak_memory_gib']:.2f} GiB" if row["peak_memory_gib"] == row["peak_memory_gib"] else "n/a"
            print(f"{row['method']:12s} step {row['step_s_median']:.3f} s  peak {memory}  loss finite: "
                  f"{row['loss_finite']}", flush=True)
        if out is not None:
            write_report(so_far, out)  # rewritten after every method: a check cut short keeps its rows

    report = gpu_check(args.device, args.tiny, args.iterations, _csv(args.methods), args.precision,
                       args.cudnn_benchmark, on_row=on_row)
    text = write_report(report, out)
    if out is not None:
        print(f"wrote {out}")
    else:
        print(text)
    return 0 if report["all_finite"] else 1


def cmd_index(args: argparse.Namespace) -> int:
    from reports.index import render_index
    out = PROJECT_ROOT / "reports" / "out"
    out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {render_index(out)}")
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from benchmarks.data.sources import resolve_dataset
    info = resolve_dataset(args.dataset, load_profile(args.profile))
    print(f"{info.name}: {info.root}")
    return 0


def _dataset_for(args: argparse.Namespace):
    from benchmarks.data import load_dataset
    from benchmarks.data.sources import resolve_dataset
    if Path(args.dataset).is_dir():
        return load_dataset(args.dataset)
    return resolve_dataset(args.dataset, load_profile(args.profile))


def cmd_data_stats(args: argparse.Namespace) -> int:
    """Per-organ anatomy statistics of the labeled training cases (or of one label file)."""
    import mlflow

    from benchmarks.data import read_case, read_split, split_name
    from benchmarks.data.anatomy import organ_statistics, reference_foreground_shares
    from benchmarks.tracking import ensure_experiment, setup_tracking
    if args.label_file:
        from benchmarks.data.prepare import read_label_map_lps
        from benchmarks.data.synthetic import AMOS_CLASSES
        data, spacing = read_label_map_lps(args.label_file)  # errors name the file
        labels, spacings, organs, name, kind = [data], [spacing], AMOS_CLASSES[1:], Path(args.label_file).name, "real"
    else:
        info = _dataset_for(args)
        ids = read_split(info, split_name(args.labeled_ratio, "labeled"))
        cases = [read_case(info, i) for i in ids]
        labels, spacings, organs = [c.label for c in cases], [c.spacing for c in cases], info.organs
        name, kind = info.name, "synthetic" if info.synthetic else "real"
    table = organ_statistics(labels, spacings, organs)
    reference = reference_foreground_shares()
    table.insert(2, "amos0013_share", table["organ"].map(reference))
    out = Path(args.out) if args.out else PROJECT_ROOT / "reports" / "out" / "data"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_stats.csv"
    table.to_csv(path, index=False)
    with_pct = table.assign(voxel_share=100 * table["voxel_share"], amos0013_share=100 * table["amos0013_share"])
    print(f"{name} ({kind.upper()}), {len(labels)} label map(s); shares in % of the foreground")
    print(with_pct.round(3).to_string(index=False))
    setup_tracking()
    with mlflow.start_run(experiment_id=ensure_experiment("data-stats"), run_name=f"stats-{name}",
                          tags={"dataset": name, "dataset_kind": kind, "cases": str(len(labels))}):
        mlflow.log_metrics({f"share/{r.organ}": float(r.voxel_share) for r in table.itertuples()})
        mlflow.log_metrics({f"hull_ratio/{r.organ}": float(r.hull_ratio) for r in table.itertuples()
                            if r.hull_ratio == r.hull_ratio})
        mlflow.log_artifact(str(path), "stats")
    print(f"wrote {path}")
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    """Axial/coronal slices with label overlay of a few cases (synthetic cohort or a prepared folder)."""
    import nibabel as nib

    from benchmarks.data.preview import render_preview
    info = _dataset_for(args)
    from benchmarks.data import read_split
    ids = read_split(info, "train")[: args.cases]
    cases = []
    for case_id in ids:
        image = nib.load(str(info.image_path(case_id)))
        label = nib.load(str(info.label_path(case_id)))
        cases.append((case_id, image.get_fdata(), label.get_fdata().astype(int), image.affine))
    kind = "SYNTHETIC" if info.synthetic else "real"
    out = Path(args.out) if args.out else PROJECT_ROOT / "reports" / "out" / "data" / f"{info.name}_preview.png"
    render_preview(cases, info.class_names, out, f"{info.name} ({kind} data): axial and coronal slices")
    print(f"wrote {out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Convert a real release into ``datasets/<name>/prepared`` (once; finished cases are kept)."""
    from benchmarks.data.prepare import prepare_release
    definition = PROJECT_ROOT / "datasets" / args.dataset
    dst = Path(args.dst) if args.dst else definition / "prepared"
    protocol = args.protocol or {"amos": "ga", "synapse": "dhc"}[args.dataset]
    prepare_release(args.dataset, Path(args.src), dst, definition, protocol)
    args.protocol = protocol
    print(f"prepared {args.dataset} ({args.protocol} protocol) at {dst}")
    return 0


def _add_data_parsers(sub: argparse._SubParsersAction) -> None:
    """``data generate|stats|preview|prepare``."""
    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="generate the synthetic cohort a profile uses")
    gen.add_argument("dataset", nargs="?", default="amos")
    gen.add_argument("--profile", default="cpu")
    gen.set_defaults(func=cmd_data_generate)
    stats = data_sub.add_parser("stats", help="per-organ voxel share, convex-hull ratio, centroid, extent")
    stats.add_argument("dataset", nargs="?", default="amos", help="dataset name (synthetic per profile) or folder")
    stats.add_argument("--profile", default="cpu")
    stats.add_argument("--labeled-ratio", type=float, default=0.05)
    stats.add_argument("--label-file", help="one label NIfTI in AMOS ids instead of a dataset")
    stats.add_argument("--out")
    stats.set_defaults(func=cmd_data_stats)
    preview = data_sub.add_parser("preview", help="slices with the label overlay, as PNG")
    preview.add_argument("dataset", nargs="?", default="amos")
    preview.add_argument("--profile", default="cpu")
    preview.add_argument("--cases", type=int, default=3)
    preview.add_argument("--out")
    preview.set_defaults(func=cmd_data_preview)
    prepare = data_sub.add_parser("prepare", help="convert a real release (AMOS22, Synapse/BTCV) into the harness layout")
    prepare.add_argument("dataset", choices=["amos", "synapse"])
    prepare.add_argument("--src", required=True, help="AMOS: imagesTr/labelsTr/imagesVa/labelsVa; Synapse: img/, label/")
    prepare.add_argument("--protocol", choices=["ga", "dhc", "resize"],
                         help="AMOS: ga (default) or dhc; Synapse: dhc (default) or resize")
    prepare.add_argument("--dst", help="output folder (default datasets/<dataset>/prepared)")
    prepare.set_defaults(func=cmd_data_prepare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list-methods", help="registered methods").set_defaults(func=cmd_list_methods)
    new = sub.add_parser("new-method", help="write methods/NAME.py and its test from the template")
    new.add_argument("name", help="registry name: lower case, digits and _")
    new.add_argument("--title", help="the name shown in tables (default: NAME)")
    new.set_defaults(func=cmd_new_method)
    add_run_parser(sub)
    report = sub.add_parser("report", help="render a study's tables from MLflow")
    report.add_argument("study")
    report.add_argument("--profile", default="cpu")
    report.add_argument("--protocol", help="the metric protocol of the evaluations shown (default: the study's; "
                        "others come from `evaluate --protocol`)")
    report.add_argument("--out", help="output folder (default reports/out/STUDY)")
    report.add_argument("--data", help="the prepared dataset folder the runs used (as for run)")
    report.add_argument("--methods", help="also render these methods' cells at the study's seeds (e.g. a method "
                        "not in the study yet, trained with run --methods)")
    report.set_defaults(func=cmd_report)
    figure = sub.add_parser("figure", help="render fig1 (organ size vs shape), fig4 (qualitative comparison), fig6 "
                            "(Dice vs FLOPs) or curves (a training metric against the iteration)")
    figure.add_argument("name", choices=["fig1", "fig4", "fig6", "curves"])
    figure.add_argument("--metric", default="loss_loc", help="curves: the logged train/<metric> (default loss_loc, "
                        "the cube-location loss, drawn with its uniform-guess lines)")
    figure.add_argument("--reference", default="tak", help="fig4: the method whose per-case Dice picks the cases")
    figure.add_argument("--cases", help="fig4: comma-separated test case ids (default: median and worst case of "
                        "the small organs)")
    figure.add_argument("--study", default="table2", help="the study whose runs the figure uses")
    figure.add_argument("--profile", default="cpu")
    figure.add_argument("--out")
    figure.add_argument("--data", help="the prepared dataset folder the runs used (as for run)")
    figure.set_defaults(func=cmd_figure)
    sub.add_parser("index", help="write reports/out/index.html").set_defaults(func=cmd_index)
    gpu = sub.add_parser("gpu-check", help="every method for a few iterations at the paper profile's patch, batch "
                         "and precision: step time, peak memory, finite loss (JSON)")
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--tiny", action="store_true", help="32^3 patch, 4 base filters (the CPU smoke check)")
    gpu.add_argument("--iterations", type=int, default=5)
    gpu.add_argument("--methods", help="comma-separated subset (default: all)")
    gpu.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="default: the paper profile's on CUDA")
    gpu.add_argument("--cudnn-benchmark", action="store_true",
                     help="turn on cuDNN's autotuner (the harness leaves it off) to measure what it buys")
    gpu.add_argument("--out", help="write the JSON here")
    gpu.set_defaults(func=cmd_gpu_check)
    _add_data_parsers(sub)
    model_cli.add_parsers(sub)
    tak_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (store creation) are not ours to print
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (OrganbenchError, UnknownMethodError, NoRunsError, ServerError) as exc:
        print(f"error: {redact_urls(str(exc))}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"interrupted by {exc.name}{exc.detail}: the run and its launch are marked KILLED; run the same "
              "command again to resume", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted (SIGINT)", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a vanished or unwritable file: the file and the reason
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if os.environ.get("ORGANBENCH_DEBUG"):
            raise
        message = " ".join(str(exc).split())
        print(f"error: {type(exc).__name__}: {redact_urls(message)[:300]} "
              "(an unexpected error: set ORGANBENCH_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
