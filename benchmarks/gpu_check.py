"""``python -m benchmarks gpu-check``: every method for a few iterations at the paper profile's patch,
batch and precision, on random inputs; per method the step time, peak accelerator memory and whether
the loss stayed finite, as JSON.

It is the one prepared check to run when a GPU machine is lent (``make gpu-check``, a few minutes on
one modern GPU). ``--device cpu --tiny`` runs the same code at a 32^3 patch and 4 base filters in
seconds (CI runs it).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.config import load_profile
from benchmarks.data import load_dataset
from benchmarks.data.sources import DATASETS_DIR
from benchmarks.plan import resolve_method_config
from benchmarks.training import autocast, compute_environment, prepare_precision
from methods import Batch, get_method, list_methods

TINY = {"patch": (32, 32, 32), "base_filters": 4, "cube_grid": (2, 1, 1), "location_hidden": 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_method(name: str, device: torch.device, iterations: int, tiny: bool, precision: str) -> dict[str, Any]:
    """Build ``name`` as under the paper profile (or tiny), train ``iterations`` timed steps after one
    warm-up step on random crops, and report the timings, peak memory and loss."""
    profile = load_profile("paper")
    info = load_dataset(DATASETS_DIR / "amos")
    cls = get_method(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    patch = TINY["patch"] if tiny else profile.patch
    config = resolve_method_config(cls, profile, extra={k: v for k, v in TINY.items() if k in fields} if tiny else None)
    torch.manual_seed(0)
    method = cls(config, info.num_classes, max_iterations=max(iterations + 1, 100), device=device,
                 patch=patch, class_names=info.class_names)
    prepare_precision(method, precision)
    n_l, n_u = profile.labeled_batch, profile.unlabeled_batch
    if cls.batch_policy == "all_labeled":
        n_l, n_u = n_l + n_u, 0
    elif cls.batch_policy == "labeled_only":
        n_u = 0
    batch = Batch(torch.rand(n_l, 1, *patch, device=device), torch.randint(0, info.num_classes, (n_l, *patch),
                                                                            device=device),
                  torch.rand(n_u, 1, *patch, device=device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for step in range(iterations + 1):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, precision):
            logs = method.train_step(batch, 60 + step)  # past the methods' warm-up switches (TAK's contrast)
        _sync(device)
        if step:  # the first step warms up (cuDNN autotuning, allocator)
            times.append(time.perf_counter() - start)
        losses.append(float(logs["loss"]))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"method": name, "patch": list(patch), "batch": [n_l, n_u], "precision": precision,
            "base_filters": method.config.base_filters, "step_s_median": statistics.median(times),
            "step_s_min": min(times), "peak_memory_gib": peak, "loss_finite": all(math.isfinite(v) for v in losses),
            "losses": losses}


def environment(target: torch.device, tiny: bool, iterations: int, cudnn_benchmark: bool) -> dict[str, Any]:
    """What the timings were taken on: the runs' :func:`~benchmarks.training.compute_environment` tags,
    on CUDA also the capability, memory, CUDA and cuDNN versions, and the check's own settings."""
    env: dict[str, Any] = {**compute_environment(str(target)), "tiny": tiny, "iterations": iterations,
                           "cudnn_benchmark": cudnn_benchmark}
    if target.type == "cuda":
        props = torch.cuda.get_device_properties(target)
        env.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def gpu_check(device: str = "cuda", tiny: bool = False, iterations: int = 5, methods: list[str] | None = None,
              precision: str | None = None, cudnn_benchmark: bool = False,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run :func:`check_method` for every method (or ``methods``); returns the JSON-able report.

    A method that fails (out of memory, or any other error) gets a row with ``error`` and the check
    goes on with the next one, so one broken method never hides the others' figures.
    ``cudnn_benchmark`` turns on cuDNN's autotuner for the whole check (the harness leaves it off,
    as the references do), to measure what it would buy. ``on_row(report_so_far)`` is called after
    each method (the CLI prints the row and rewrites the JSON, so a check cut short keeps its rows).
    """
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        from benchmarks.errors import ConfigError
        raise ConfigError("gpu-check: no CUDA device here; pass --device cpu --tiny for the CPU smoke check")
    chosen = precision or (load_profile("paper").precision if target.type == "cuda" else "fp32")
    names = methods or list_methods()
    for name in names:
        get_method(name)  # an unknown name is the caller's error (UnknownMethodError), not a method's row
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    env = environment(target, tiny, iterations, cudnn_benchmark)
    results: list[dict[str, Any]] = []
    try:
        for name in names:
            started = time.time()
            try:
                row = check_method(name, target, iterations, tiny, chosen)
            except torch.cuda.OutOfMemoryError as exc:
                row = {"method": name, "error": f"out of memory: {str(exc).splitlines()[0]}", "loss_finite": False}
            except Exception as exc:  # noqa: BLE001 -- reported per method, the check goes on
                row = {"method": name, "error": f"{type(exc).__name__}: {exc}", "loss_finite": False}
            row["wall_s"] = time.time() - started
            results.append(row)
            if on_row is not None:
                on_row(_report(env, results))
            if target.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        torch.backends.cudnn.benchmark = previous
    return _report(env, results)


def _report(env: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"environment": env, "methods": list(results),
            "all_finite": all(r.get("loss_finite") for r in results)}


def write_report(report: dict[str, Any], out: Path | None) -> str:
    text = json.dumps(report, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return text
