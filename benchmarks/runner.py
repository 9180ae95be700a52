"""Run a study: every (method, seed) cell trained under the profile's budget, evaluated, logged to MLflow.

A cell is identified by its ``run_key`` (study, method, dataset, ratio, seed, profile, config hash).
A cell whose key already has a FINISHED run is skipped; a crash leaves the run FAILED.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import importlib.metadata
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from benchmarks.config import Profile, Study, config_hash
from benchmarks.cost import FLOPS_CONVENTION, forward_gflops, params_millions
from benchmarks.data import Case, DatasetInfo, check_splits, read_case, read_split, split_name
from benchmarks.data.sources import resolve_dataset
from benchmarks.errors import ConfigError, OrganbenchError
from benchmarks.evaluation import evaluate, summarize
from benchmarks.inference import window_count
from benchmarks.metrics import get_protocol
from benchmarks.tracking import ensure_experiment, find_finished_run, flatten, git_state, setup_tracking
from benchmarks.training import TwoStreamSampler, seed_everything, train
from methods import get_method
from methods.base import Method


@dataclass(frozen=True)
class Cell:
    """One (method, seed) run of a study under a profile, with its resolved configuration."""

    study: Study
    profile: Profile
    method: str
    seed: int
    iterations: int
    method_config: dict[str, Any]
    dataset: DatasetInfo
    split_sha: str

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the result (logged as params, hashed into the run key)."""
        profile = {k: v for k, v in dataclasses.asdict(self.profile).items() if k not in ("description", "log_every")}
        # only the profile overrides this method has (others cannot change its result or its key)
        profile["method_overrides"] = {k: v for k, v in profile["method_overrides"].items() if k in self.method_config}
        return {"study": self.study.study, "method": self.method, "seed": self.seed,
                "dataset": self.dataset.name, "synthetic": self.dataset.synthetic, "split_sha256": self.split_sha,
                "labeled_ratio": self.study.labeled_ratio, "protocol": self.study.protocol,
                "iterations": self.iterations, "profile": profile, "method_config": self.method_config}

    @property
    def run_key(self) -> str:
        return (f"{self.study.study}/{self.method}/{self.dataset.name}/{self.study.labeled_ratio}/"
                f"seed{self.seed}/{self.profile.name}/{config_hash(self.resolved())}")


def training_curve_figure(curve: list[dict[str, float]], title: str) -> "matplotlib.figure.Figure":
    """Losses (and loss weights) against the iteration, one line per logged key."""
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


@functools.lru_cache(maxsize=1)
def pip_freeze() -> str:
    """``name==version`` of every installed distribution (logged with each run)."""
    return "\n".join(sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()})) + "\n"


def _pick(values: dict[str, Any], profile: str, key: str, study: Study) -> Any:
    if profile not in values:
        raise ConfigError(f"{study.path}: {key} has no entry for profile {profile!r}")
    return values[profile]


def _split_sha(info: DatasetInfo, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update((info.root / "splits" / f"{name}.txt").read_bytes())
    return digest.hexdigest()[:16]


class StudyRunner:
    """Loads the data once and runs the requested cells of one study under one profile."""

    def __init__(self, study: Study, profile: Profile, methods: list[str] | None = None,
                 seeds: list[int] | None = None, data_dir: str | Path | None = None, progress: bool = True,
                 tracking_uri: str | None = None) -> None:
        self.study, self.profile, self.progress = study, profile, progress
        self.methods = methods or list(study.methods)
        self.seeds = seeds if seeds is not None else list(_pick(study.seeds, profile.name, "seeds", study))
        self.iterations = int(_pick(study.budget, profile.name, "budget", study))
        try:
            self.protocol = get_protocol(study.protocol)
        except KeyError as exc:
            raise ConfigError(f"{study.path}: {exc.args[0]}") from None
        unknown = sorted(set(study.method_overrides) - set(self.methods) - set(study.methods))
        if unknown:
            raise ConfigError(f"{study.path}: method_overrides names methods not in the study: {unknown}")
        self.method_classes = {name: get_method(study.base_method(name)) for name in self.methods}
        self.configs = {name: self._method_config(name) for name in self.methods}
        self.dataset = resolve_dataset(study.dataset, profile, data_dir, progress)
        ratio = study.labeled_ratio
        self.split_names = [split_name(ratio, "labeled", study.split_variant),
                            split_name(ratio, "unlabeled", study.split_variant), "train", "test"]
        self.splits = {name: read_split(self.dataset, name) for name in self.split_names}
        check_splits(self.dataset, self.splits, self.split_names[0], self.split_names[1])
        self.split_sha = _split_sha(self.dataset, self.split_names)
        self.tracking_uri = setup_tracking(tracking_uri)
        self._cases: dict[str, Case] = {}

    def _method_config(self, name: str) -> dict[str, Any]:
        cls = self.method_classes[name]
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        overrides = {k: v for k, v in self.profile.method_overrides.items() if k in fields}
        overrides.update(self.study.method_overrides.get(name, {}))
        overrides.update(self.study.variants.get(name, {}).get("overrides", {}))
        return dataclasses.asdict(cls.resolve_config(overrides, f"{self.study.path}: method_overrides/variants.{name}"))

    def unavailable(self) -> dict[str, str]:
        """Entries whose inputs are absent (e.g. text-encoder weights), with the reason."""
        absent = {}
        for name, cls in self.method_classes.items():
            try:
                cls.check_available(cls.Config(**self.configs[name]))
            except OrganbenchError as exc:
                absent[name] = str(exc)
        return absent

    def cases(self, ids: list[str]) -> list[Case]:
        for case_id in ids:
            if case_id not in self._cases:
                self._cases[case_id] = read_case(self.dataset, case_id)
        return [self._cases[i] for i in ids]

    def test_ids(self) -> list[str]:
        """The test cases evaluated: all, or the first ``max_test_cases`` under the profile."""
        return self.splits["test"][: self.profile.max_test_cases or None]

    def cells(self) -> list[Cell]:
        return [Cell(self.study, self.profile, m, s, self.iterations, self.configs[m], self.dataset, self.split_sha)
                for m in self.methods for s in self.seeds]

    def run(self) -> list[dict[str, Any]]:
        """Run every cell not finished yet; returns one summary dict per cell."""
        absent = self.unavailable()
        for name, reason in absent.items():
            print(f"[absent] {name}: {reason}")
        if absent and not self.study.skip_unavailable:
            raise ConfigError(f"{self.study.path}: cannot run {sorted(absent)}: " + "; ".join(absent.values()))
        experiment_id = ensure_experiment(self.study.study)
        cells, results = [c for c in self.cells() if c.method not in absent], []
        finished = {cell.run_key: find_finished_run(experiment_id, cell.run_key) for cell in cells}
        if all(finished.values()):
            parent_id = None
        else:  # read and check every split case first: bad data fails before any run exists
            self.cases(self.splits["train"] + self.splits["test"])
            parent_id = mlflow.MlflowClient().create_run(
                experiment_id, run_name=f"launch-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={"launch": "true", "profile": self.profile.name, "study": self.study.study, **git_state()},
            ).info.run_id
        try:
            for cell in cells:
                done = finished[cell.run_key]
                if done:
                    print(f"[skip] {cell.method} seed {cell.seed}: finished run {done} has run_key {cell.run_key}")
                    results.append({"method": cell.method, "seed": cell.seed, "run_id": done, "skipped": True})
                else:
                    results.append(self.run_cell(cell, experiment_id, parent_id))
        except BaseException:
            if parent_id is not None:
                mlflow.MlflowClient().set_terminated(parent_id, "FAILED")
            raise
        if parent_id is not None:
            mlflow.MlflowClient().set_terminated(parent_id, "FINISHED")
        return results

    def run_tags(self, cell: Cell) -> dict[str, str]:
        """Every protocol choice of a cell, as MLflow tags (mutable, searchable)."""
        cls = self.method_classes[cell.method]
        in_splits = set(self.dataset.mri_cases) & {i for ids in self.splits.values() for i in ids}
        variant = {"base_method": cls.name, "variant_value": json.dumps(self.study.variants[cell.method].get("value"))
                   } if cell.method in self.study.variants else {}
        return {"run_key": cell.run_key, "study": cell.study.study, "method": cell.method, **variant, "method_group": cls.group,
                "method_title": cls.title, "batch_policy": cls.batch_policy, "seed": str(cell.seed),
                "profile": cell.profile.name, "dataset": self.dataset.name,
                "dataset_kind": "synthetic" if self.dataset.synthetic else "real", "split_sha256": self.split_sha,
                "split_variant": self.study.split_variant or "published", "mri_cases_in_splits": str(len(in_splits)),
                "organs": ",".join(self.dataset.organs), "large_organs": ",".join(self.dataset.large_organs),
                "model_selection": "last_iteration", "eval_grid": "dataset_grid",
                "sw_mode": "constant(uniform average of softmax)", "sw_stride": str(list(cell.profile.eval_stride)),
                "flops_convention": FLOPS_CONVENTION, **self.protocol.tags(), **git_state()}

    def run_cell(self, cell: Cell, experiment_id: str, parent_id: str | None = None) -> dict[str, Any]:
        cls = self.method_classes[cell.method]
        labeled_ids = self.splits["train"] if cls.label_pool == "all" else self.splits[self.split_names[0]]
        unlabeled_ids = self.splits[self.split_names[1]] if cls.batch_policy == "two_stream" else []
        tags = self.run_tags(cell)
        start = time.time()
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{cell.method}-seed{cell.seed}", tags=tags,
                              parent_run_id=parent_id) as run:
            mlflow.log_params(flatten("", cell.resolved()))
            mlflow.log_dict(cell.resolved(), "config/resolved.json")
            mlflow.log_text(pip_freeze(), "env/pip_freeze.txt")
            seed_everything(cell.seed)
            method: Method = cls(cls.Config(**cell.method_config), self.dataset.num_classes, cell.iterations,
                                 device=cell.profile.device, patch=cell.profile.patch,
                                 class_names=self.dataset.class_names)
            mlflow.set_tags(method.run_tags())
            labeled_cases, unlabeled_cases = self.cases(labeled_ids), self.cases(unlabeled_ids)
            per_epoch = (math.ceil(len(unlabeled_cases) / cell.profile.unlabeled_batch) if unlabeled_cases else
                         math.ceil(len(labeled_cases) / (cell.profile.labeled_batch + cell.profile.unlabeled_batch)))
            method.observe_data([c.label for c in labeled_cases], per_epoch)
            sampler = TwoStreamSampler(labeled_cases, unlabeled_cases, cell.profile.labeled_batch,
                                       cell.profile.unlabeled_batch, cell.profile.patch, cell.seed,
                                       cls.batch_policy, cell.profile.device)
            train_start = time.time()
            curve: list[dict[str, float]] = []

            def on_log(step: int, logs: dict[str, float]) -> None:
                mlflow.log_metrics({f"train/{k}": v for k, v in logs.items()}, step=step)
                curve.append({"step": step, **logs})

            train(method, sampler, cell.iterations, cell.profile.log_every, on_log=on_log, progress=self.progress,
                  description=f"{cell.method} seed {cell.seed}")
            train_time = time.time() - train_start
            mlflow.log_figure(training_curve_figure(curve, f"{cell.method} seed {cell.seed}"), "plots/training_curve.png")
            test_ids = self.test_ids()
            eval_start = time.time()
            per_case = evaluate(method, self.cases(test_ids), self.dataset, cell.profile.patch,
                                cell.profile.eval_stride, self.protocol)
            eval_time = time.time() - eval_start
            summary = summarize(per_case, self.dataset)
            mlflow.log_text(per_case.to_csv(index=False), "eval/per_case.csv")
            mlflow.set_tags({"test_cases": str(len(test_ids)), "test_cases_total": str(len(self.splits["test"])),
                             "windows_per_case": str(window_count(self.cases(test_ids[:1])[0].image.shape,
                                                                  cell.profile.patch, cell.profile.eval_stride))})
            cost = {"cost/params_M": params_millions(method),
                    "cost/gflops_fwd_patch": forward_gflops(method, cell.profile.patch), "cost/train_time_s": train_time, "cost/train_step_s": train_time / max(cell.iterations, 1),
                    "cost/eval_time_s": eval_time}
            mlflow.log_metrics({**summary, **cost})
            run_id = run.info.run_id
        total = time.time() - start
        print(f"[done] {cell.study.study} {cell.method:14s} seed {cell.seed}: Dice {summary['test/dice_mean']:.2f} "
              f"(large {summary['test/dice_large']:.2f}, small {summary['test/dice_small']:.2f}), "
              f"ASD {summary['test/asd_mean']:.2f}, {total:.0f}s, run {run_id}", flush=True)
        return {"method": cell.method, "seed": cell.seed, "run_id": run_id, "skipped": False,
                "wall_s": total, **summary}

