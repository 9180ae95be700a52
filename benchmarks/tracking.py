"""MLflow helpers: store location, experiments, run keys, finished-run lookup, git state."""
from __future__ import annotations

import base64
import fcntl
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmarks.config import PROJECT_ROOT, env_seconds, tracking_uri
from benchmarks.errors import TrackingError
from methods.common.urls import public_url, redact_urls

os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per artifact read by the reports


def setup_tracking(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default: :func:`benchmarks.config.tracking_uri`) after checking that
    the store can be used; returns the URI.

    A server (``http(s)://``) must answer within ``$ORGANBENCH_TRACKING_TIMEOUT_S`` seconds (5);
    a SQLite file must be creatable and writable. Both failures are a :class:`TrackingError` of one
    line naming the URI, raised before any run exists. A new SQLite store is created under a file
    lock, so several processes may start on the same new store at once.
    """
    uri = uri or tracking_uri()
    scheme = uri.partition("://")[0].split("+")[0] if "://" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise TrackingError(f"MLflow tracking URI {public_url(uri)[:200]!r} (MLFLOW_TRACKING_URI): unknown scheme "
                            f"{scheme or '(none)'!r}; use one of {', '.join(sorted(TRACKING_SCHEMES))}")
    if scheme in ("http", "https"):
        _probe_server(uri)
    elif uri.startswith("sqlite:///"):
        _init_sqlite(Path(uri.removeprefix("sqlite:///")), uri)
    mlflow.set_tracking_uri(uri)
    return uri


TRACKING_SCHEMES = frozenset({"http", "https", "sqlite", "postgresql", "mysql", "mssql", "file"})


def tracking_timeout_s() -> float:
    """``$ORGANBENCH_TRACKING_TIMEOUT_S``: seconds in (0, 3600), default 5 (a one-line error otherwise)."""
    return env_seconds("ORGANBENCH_TRACKING_TIMEOUT_S", 5.0, 0.0, 3600.0, low_inclusive=False)


def _probe_server(uri: str) -> None:
    """``GET /health`` must answer 200 ``OK`` (an MLflow server): no answer, a 5xx, or a page that is not
    MLflow's (a proxy's HTML) is a one-line error, before any run exists."""
    timeout = tracking_timeout_s()
    shown = public_url(uri)
    request = urllib.request.Request(f"{shown.rstrip('/')}/health")
    user_info = uri.partition("://")[2].partition("/")[0].rpartition("@")[0]
    if user_info:  # urllib does not take credentials in the URL: send them as MLflow's basic auth does
        request.add_header("Authorization", "Basic " + base64.b64encode(urllib.parse.unquote(user_info).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(64).strip()
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow tracking server {shown} (MLFLOW_TRACKING_URI) answered /health with HTTP "
                            f"{exc.code}; is it an MLflow server, and is it healthy?") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {shown} (MLFLOW_TRACKING_URI) did not answer within "
                            f"{timeout:g} s ({redact_urls(str(reason))[:200]}); "
                            f"start it (make mlflow) or unset MLFLOW_TRACKING_URI to use the embedded store") from None
    if body != b"OK":
        raise TrackingError(f"MLflow tracking server {shown} (MLFLOW_TRACKING_URI) answered /health with "
                            f"{body[:40]!r}, not MLflow's 'OK': not an MLflow server")


def _init_sqlite(path: Path, uri: str) -> None:
    """Check that the SQLite store at ``path`` can be written, then create its tables once (locked)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=30) as connection:  # creates the file when absent
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only store
            connection.rollback()
        connection.close()
    except (OSError, sqlite3.Error) as exc:
        raise TrackingError(f"MLflow store {public_url(uri)}: cannot write {path} ({exc}); point MLFLOW_TRACKING_URI at a "
                            f"writable location") from None
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first process creates the tables, the others wait
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# The MLflow UI opens an experiment on its training runs (not its GenAI traces view) when it is marked so.
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(name: str) -> str:
    """Experiment id of ``name``, created with artifacts beside a SQLite store when needed.

    Safe when several workers start at once. Runs are then started with this explicit id: with
    mlflow 3.17, concurrent ``mlflow.set_experiment`` calls can leave a worker's runs in the
    Default experiment (measured: 2 of 8 runs misplaced with four workers).
    """
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND) != MODEL_DEVELOPMENT:  # stores from before the tag
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
        return experiment.experiment_id
    uri = mlflow.get_tracking_uri()
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})
    except MlflowException:  # another worker created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_finished_run(experiment_id: str, run_key: str) -> str | None:
    """Id of a FINISHED run tagged ``run_key`` in the experiment, else None."""
    runs = MlflowClient().search_runs([experiment_id], filter_string=f"tags.run_key = '{run_key}' "
                                      "and attributes.status = 'FINISHED'", run_view_type=ViewType.ACTIVE_ONLY,
                                      max_results=1)
    return runs[0].info.run_id if runs else None


def git_state(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` (``true``/``false``/``unknown``) of the project checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": dirty}


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested dicts -> ``{"a.b": "v"}`` strings (MLflow params)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(value)}


class RunLog:
    """Logging to one run by id through :class:`MlflowClient` (no fluent "active run": nothing can
    end it behind our back, e.g. MLflow's exit hook, which would mark it FINISHED)."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id, self.client = run_id, client or MlflowClient()

    def params(self, values: dict[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in values.items()]
        for i in range(0, len(items), 100):  # the store takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def tags(self, values: dict[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in values.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i:i + 100])

    def dict(self, value: dict[str, Any], path: str) -> None:
        self.client.log_dict(self.run_id, value, path)

    def text(self, value: str, path: str) -> None:
        self.client.log_text(self.run_id, value, path)

    def figure(self, figure: Any, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)

    def end(self, status: str) -> None:
        """Set the run's final status (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status)
