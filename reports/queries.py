"""MLflow -> pandas: the finished runs of a study, as a tidy frame."""
from __future__ import annotations

import mlflow
import pandas as pd


class NoRunsError(LookupError):
    """The store holds no finished run for the query."""


def finished_runs(study: str, profile: str, tracking_uri: str | None = None,
                  group_by: tuple[str, ...] = ("tags.method", "tags.seed")) -> pd.DataFrame:
    """Finished per-cell runs (those with a ``run_key``) of experiment ``study`` under ``profile``."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(study) is None:
        raise NoRunsError(f"no MLflow experiment {study!r} at {mlflow.get_tracking_uri()}; run the study first")
    runs = mlflow.search_runs(experiment_names=[study], output_format="pandas", max_results=100_000,
                              filter_string=f"attributes.status = 'FINISHED' and tags.profile = '{profile}'")
    if "tags.run_key" in runs:
        runs = runs[runs["tags.run_key"].notna()]
    if runs.empty:
        raise NoRunsError(f"no finished run of study {study!r} with profile {profile!r} at {mlflow.get_tracking_uri()}")
    # one run per (method, seed): the newest, so a cell re-run under a changed configuration
    # replaces the stale one instead of being averaged with it
    return runs.sort_values("start_time").groupby(list(group_by)).tail(1).reset_index(drop=True)
