"""A training's selected weights as an MLflow artifact, found again by training key and rebuilt.

Rules:
1. A run that trained logs, once its model is selected, ``model/weights.pt`` (the state of every
   module its ``predict`` runs, float32) and ``model/model.json`` (method, resolved configuration,
   behaviour versions, classes, patch, budget, dataset and training key): all that is needed to
   rebuild the method without the study, the profile or the run's code path. Its tags say
   ``weights: logged`` and ``training_key``.
2. A training is found by its training key in any experiment of the store (newest FINISHED run with
   logged weights): a study cell whose training already exists is evaluated, not trained.
3. Runs from before weights were logged have no ``weights`` tag: they are listed as such, never
   loaded.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from benchmarks.errors import ConfigError
from benchmarks.plan import Cell, build_method
from methods.base import Method

ARTIFACT_DIR = "model"
FORMAT = "1"


def model_record(cell: Cell, grid: tuple[int, ...]) -> dict[str, Any]:
    """What rebuilding ``cell``'s method and applying it to a new scan need (``model/model.json``):
    ``grid`` is the (x, y, z) shape of the dataset's volumes, which ``predict`` resamples a scan to."""
    info = cell.dataset
    return {"format": FORMAT, "method": cell.study.base_method(cell.method), "config": cell.method_config,
            "versions": cell.versions, "num_classes": info.num_classes, "class_names": list(info.class_names),
            "patch": list(cell.profile.patch), "eval_stride": list(cell.profile.eval_stride),
            "iterations": cell.iterations, "dataset": info.name, "synthetic": info.synthetic,
            "preprocessing": info.preprocessing, "grid": list(grid), "intensity_window": list(info.intensity_window),
            "intensity_norm": info.intensity_norm, "training_key": cell.training_key}


def log_weights(client: MlflowClient, run_id: str, method: Method, cell: Cell, grid: tuple[int, ...]) -> None:
    """Rule 1: the weights ``method.predict`` uses and their record, as artifacts of ``run_id``."""
    state = {name: {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                    for k, v in module.state_dict().items()}
             for name, module in method.inference_modules().items()}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "weights.pt")
        (Path(tmp) / "model.json").write_text(json.dumps(model_record(cell, grid), indent=1, default=list))
        client.log_artifacts(run_id, tmp, ARTIFACT_DIR)
    client.set_tag(run_id, "weights", "logged")


def find_training(client: MlflowClient, training_key: str) -> str | None:
    """Rule 2: the id of the newest finished run of ``training_key`` with logged weights, or None."""
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return None
    runs = client.search_runs(experiments, f"tags.training_key = '{training_key}' and tags.weights = 'logged' "
                              "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None


@dataclass
class TrainedModel:
    """A method rebuilt from a run's logged weights (eval mode) and its record."""

    method: Method
    record: dict[str, Any]
    run_id: str


def load_trained(client: MlflowClient, run_id: str, device: str = "cpu") -> TrainedModel:
    """The method of run ``run_id`` (a training run, or an evaluation run pointing at its training)."""
    run = client.get_run(run_id)
    source = run.data.tags.get("training_run_id", run_id)
    if source != run_id:
        run = client.get_run(source)
    if run.data.tags.get("weights") != "logged":
        raise ConfigError(f"run {source} has no logged weights (trained before weights were kept, or not "
                          "finished); train it again to use it")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(source, ARTIFACT_DIR, tmp))
        record = json.loads((folder / "model.json").read_text())
        state = torch.load(folder / "weights.pt", map_location=device, weights_only=True)
    method = build_method(record["method"], record["config"], record["num_classes"], record["class_names"],
                          record["iterations"], device, record["patch"])
    modules = method.inference_modules()
    if set(modules) != set(state):
        raise ConfigError(f"run {source}: logged modules {sorted(state)} do not match {record['method']}'s "
                          f"{sorted(modules)} (method version {record['versions'].get('method')})")
    for name, module in modules.items():
        module.load_state_dict(state[name])
        module.eval()
    return TrainedModel(method, record, source)
