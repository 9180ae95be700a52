"""``python -m benchmarks run STUDY``: train and evaluate a study's cells with the chosen launcher.

The launcher is this process, cell after cell (``sequential``), several cells at once on this machine
(``--workers N`` or the profile's ``cells_at_once``: :mod:`benchmarks.local_pool`), one Ray task per cell
(:func:`benchmarks.launchers.run_on_ray`) or one Slurm job per cell (:mod:`benchmarks.slurm`); every
one trains a cell through :meth:`benchmarks.runner.StudyRunner.run_cell`.
"""
from __future__ import annotations

import argparse
import functools
from typing import Any, Callable

from benchmarks.cli_values import add_cell_arguments, csv_list as _csv, seed_list as _seeds
from benchmarks.config import Profile, load_profile, load_study, study_path
from benchmarks.errors import ConfigError


def dispatch_for(args: argparse.Namespace, profile: Profile) -> Callable[..., Any] | None:
    """The launcher ``run`` hands its cells to (None: this process, one cell after another)."""
    dispatch = None
    workers = profile.cells_at_once if args.workers is None else args.workers
    if workers < 1:
        raise ConfigError(f"--workers {workers}: needs at least one worker")
    if args.workers is not None and args.workers > 1 and args.launcher != "sequential":
        raise ConfigError(f"--workers {args.workers}: applies to the sequential launcher (--launcher "
                          f"{args.launcher} places cells by the profile's cpus_per_cell / gpus_per_cell)")
    if args.launcher == "sequential" and workers > 1:
        from benchmarks.local_pool import run_in_processes
        dispatch = functools.partial(run_in_processes, workers=workers)
    elif args.launcher == "ray":
        from benchmarks.launchers import run_on_ray
        dispatch = functools.partial(run_on_ray, address=args.address, max_retries=args.max_retries)
    elif args.launcher == "slurm":
        from benchmarks.slurm import run_on_slurm
        if args.slurm_time_min < 1:
            raise ConfigError(f"--slurm-time-min {args.slurm_time_min}: a job needs at least one minute")
        dispatch = functools.partial(run_on_slurm, folder=args.slurm_folder, partition=args.slurm_partition,
                                     time_min=args.slurm_time_min, local=args.slurm_local)
    return dispatch


def cmd_run(args: argparse.Namespace) -> int:
    study_path(args.study)  # an unknown study or profile name is refused before torch loads
    profile = load_profile(args.profile)
    study = load_study(args.study)
    from benchmarks.launch import check_device
    from benchmarks.runner import StudyRunner
    if study.kind != "cost":
        check_device(profile)
    if study.kind == "cost":
        from benchmarks.cost_study import run_cost_study
        run_cost_study(study, profile, _csv(args.methods))
        return 0
    server = None
    tracking_uri = None
    if args.start_server:
        from mlflow_server.server import ServerConfig, start
        server = ServerConfig(port=args.server_port)
        tracking_uri = start(server)
        print(f"[server] MLflow server at {tracking_uri} (backend {server.backend}); it keeps running after this "
              "launch (make mlflow-stop)")
    runner = StudyRunner(study, profile, _csv(args.methods), _seeds(args.seeds), args.data,
                         progress=not args.no_progress, tracking_uri=tracking_uri, checkpoint_dir=args.checkpoint_dir,
                         keep_checkpoints=args.keep_checkpoints, wait=args.wait, retry_diverged=args.retry_diverged)
    results = runner.run(dispatch_for(args, profile))
    counts = {s: sum(r["status"] == s for r in results) for s in ("trained", "finished", "busy", "diverged", "failed")}
    line = (f"{study.study} [{profile.name}]: {counts['trained']} run(s) trained, {counts['finished']} already "
            f"finished")
    if counts["busy"]:
        line += f", {counts['busy']} running elsewhere (not trained here)"
    if counts["diverged"]:  # a result (the configuration diverges), not an error: the report names them
        line += f", {counts['diverged']} diverged: " + "; ".join(f"{r['method']} seed {r['seed']}: {r['reason']}"
                                                               for r in results if r["status"] == "diverged")
    if counts["failed"]:
        line += f", {counts['failed']} failed: " + "; ".join(f"{r['method']} seed {r['seed']}: {r['reason']}"
                                                           for r in results if r["status"] == "failed")
    print(line)
    return 2 if counts["failed"] else 0


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``run STUDY``: its flags, the launchers' included."""
    run = sub.add_parser("run", help="train and evaluate the cells of a study")
    run.add_argument("study", help="study name (benchmarks/studies/NAME.yaml) or path")
    add_cell_arguments(run, "a prepared dataset folder (overrides the profile's data)")
    run.add_argument("--checkpoint-dir", help="training checkpoints (default $ORGANBENCH_CHECKPOINT_DIR or "
                     "checkpoints/); must be reachable from every worker that may resume a cell")
    run.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints of finished runs")
    run.add_argument("--wait", action="store_true", help="wait for cells another launcher is training "
                     "(and take them over if it dies) instead of skipping them")
    run.add_argument("--retry-diverged", action="store_true", help="train again the cells whose run diverged "
                     "(non-finite loss); by default such a cell counts as done, as it would diverge again")
    run.add_argument("--launcher", choices=["sequential", "ray", "slurm"], default="sequential",
                     help="sequential (this machine: one cell after another, or --workers at once), ray (one Ray "
                          "task per cell) or slurm (one Slurm job per cell, through submitit)")
    run.add_argument("--workers", type=int, help="sequential launcher: cells trained at once in worker processes "
                     "that share the cores (default: the profile's cells_at_once)")
    run.add_argument("--slurm-partition", help="--launcher slurm: the partition (default: the cluster's)")
    run.add_argument("--slurm-time-min", type=int, default=24 * 60,
                     help="--launcher slurm: each job's time limit in minutes (a job that reaches it is requeued "
                          "and resumes from its checkpoint)")
    run.add_argument("--slurm-folder", help="--launcher slurm: job scripts and logs (default checkpoints/slurm)")
    run.add_argument("--slurm-local", action="store_true",
                     help="--launcher slurm: run the jobs as local subprocesses (submitit's local executor)")
    run.add_argument("--address", help="--launcher ray: an existing Ray cluster (default: a local instance)")
    run.add_argument("--max-retries", type=int, default=2,
                     help="--launcher ray: re-runs of a cell whose worker died (it resumes from its checkpoint)")
    run.add_argument("--start-server", action="store_true",
                     help="start the MLflow server (make mlflow) and log through it")
    run.add_argument("--server-port", type=int, default=5000)
    run.set_defaults(func=cmd_run)
