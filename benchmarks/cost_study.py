"""Cost studies (``kind: cost``, the paper's Table 6): parameters and FLOPs of every method under a
profile's configuration, logged to MLflow without data or training (counted on the meta device)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from benchmarks import HARNESS_VERSION
from benchmarks.config import Profile, Study, config_hash
from benchmarks.cost import FLOPS_CONVENTION, all_networks_gflops, forward_gflops
from benchmarks.data import load_dataset
from benchmarks.data.sources import DATASETS_DIR
from benchmarks.plan import resolve_method_config
from benchmarks.tracking import RunLog, ensure_experiment, find_finished_run, flatten, git_state, setup_tracking
from methods import get_method
from methods.common.vnet import count_parameters


def cost_cells(study: Study, profile: Profile, methods: list[str] | None = None) -> list[dict[str, Any]]:
    """One cell per method: its resolved configuration and run key (config, input shape, versions)."""
    info = load_dataset(DATASETS_DIR / study.dataset)  # the definition: class count only
    cells = []
    for name in list(dict.fromkeys(methods or study.methods)):
        cls = get_method(name)
        config = resolve_method_config(cls, profile, study, name)
        resolved = {"study": study.study, "method": name, "dataset": info.name, "num_classes": info.num_classes,
                    "input_shape": [1, 1, *profile.patch], "profile": profile.name,
                    "method_config": dataclasses.asdict(config),
                    "versions": {"method": cls.version, "harness": HARNESS_VERSION}}
        run_key = f"{study.study}/{name}/{info.name}/{profile.name}/{config_hash(resolved)}"
        cells.append({"method": name, "seed": "-", "run_key": run_key, "config": config, "resolved": resolved,
                      "info": info, "cls": cls})
    return cells


def run_cost_study(study: Study, profile: Profile, methods: list[str] | None = None,
                   tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """One MLflow run per method with ``cost/*`` metrics; finished keys are skipped."""
    cells = cost_cells(study, profile, methods)
    setup_tracking(tracking_uri)
    experiment_id = ensure_experiment(study.study)
    results = []
    for cell in cells:
        name, cls, config, info, run_key = cell["method"], cell["cls"], cell["config"], cell["info"], cell["run_key"]
        done = find_finished_run(experiment_id, run_key)
        if done:
            print(f"[skip] {name}: finished run {done}")
            results.append({"method": name, "run_id": done, "skipped": True})
            continue
        method = cls(config, info.num_classes, max_iterations=1, device="meta", patch=profile.patch,
                     class_names=info.class_names)
        infer = method.inference_modules()
        trained = [trainable_parameters(m) for m in method.modules().values()]
        gflops = forward_gflops(method, profile.patch)
        metrics = {"cost/params_M": count_parameters(*infer.values()) / 1e6,
                   "cost/params_M_per_net": max(count_parameters(m) for m in infer.values()) / 1e6,
                   "cost/params_M_train": sum(trained) / 1e6,
                   "cost/params_M_trained_net": max(trained) / 1e6,
                   "cost/gflops_fwd_patch": gflops, "cost/gmacs_fwd_patch": gflops / 2,
                   "cost/gflops_fwd_all_nets": all_networks_gflops(method, profile.patch),
                   "cost/n_nets_infer": float(len(infer))}
        tags = {"run_key": run_key, "study": study.study, "method": name, "seed": "-", "method_title": cls.title,
                "method_group": cls.group, "method_version": cls.version, "profile": profile.name,
                "dataset": info.name, "input_shape": str([1, 1, *profile.patch]), "flops_convention": FLOPS_CONVENTION,
                **git_state()}
        tags.update(method.run_tags())
        client = MlflowClient()
        log = RunLog(client.create_run(experiment_id, run_name=f"cost-{name}", tags=tags).info.run_id, client)
        try:
            log.params(flatten("", cell["resolved"]))
            log.metrics(metrics)
        except BaseException:
            log.end("FAILED")
            raise
        log.end("FINISHED")
        print(f"[done] {name:14s} params {metrics['cost/params_M']:.2f} M (per net "
              f"{metrics['cost/params_M_per_net']:.2f} M), {gflops:.1f} GFLOPs per {profile.patch} window")
        results.append({"method": name, "run_id": log.run_id, "skipped": False, **metrics})
    return results


def trainable_parameters(module: torch.nn.Module) -> int:
    """Parameters of ``module`` that receive gradient (an EMA teacher counts 0; a student counts
    with every head it trains, e.g. MagicNet's location head)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
