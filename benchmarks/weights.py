"""A training's selected weights as an MLflow artifact, found again by training key and rebuilt.

Rules:
1. A run that trained logs, once its model is selected, an MLflow LoggedModel (the run's output)
   holding ``weights.pt`` (the state of every module its ``predict`` runs, float32) and ``model.json`` (method, resolved configuration,
   behaviour versions, classes, patch, budget, dataset and training key): all that is needed to
   rebuild the method without the study, the profile or the run's code path. Its tags say
   ``weights: logged``, ``model_id`` and ``training_key``.
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

import mlflow
import torch
from mlflow.entities import LoggedModelOutput, Run, ViewType
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


def log_weights(client: MlflowClient, run_id: str, method: Method, cell: Cell, grid: tuple[int, ...]) -> str:
    """Rule 1: the weights ``method.predict`` uses and their record, as the run's MLflow model (a
    LoggedModel with the run as its source and output, shown in the UI's Models column); returns its id."""
    state = {name: {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                    for k, v in module.state_dict().items()}
             for name, module in method.inference_modules().items()}
    record = model_record(cell, grid)
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=record["method"], source_run_id=run_id,
                                       tags={"training_key": cell.training_key, "organbench.format": FORMAT},
                                       params={"method": record["method"], "iterations": str(cell.iterations),
                                               "seed": str(cell.seed), "dataset": record["dataset"]},
                                       model_type="organbench-segmentation")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "weights.pt")
        (Path(tmp) / "model.json").write_text(json.dumps(record, indent=1, default=list))
        client.log_model_artifacts(model.model_id, tmp)
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, cell.iterations)])
    client.set_tag(run_id, "model_id", model.model_id)
    client.set_tag(run_id, "weights", "logged")
    return model.model_id


def _download_model(client: MlflowClient, run: Run, tmp: str) -> Path:
    """The folder holding ``weights.pt`` and ``model.json`` of training run ``run``."""
    model_id = run.data.tags.get("model_id")
    if model_id is None:  # logged as run artifacts (the first weights format)
        return Path(client.download_artifacts(run.info.run_id, ARTIFACT_DIR, tmp))
    location = client.get_logged_model(model_id).artifact_location
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp,
                                                    tracking_uri=client.tracking_uri))


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
        folder = _download_model(client, run, tmp)
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
