"""Helpers the launcher tests share: a shipped study file written under another name with changes,
and the cell runs of an MLflow experiment. No test here; importing it skips nothing."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import yaml

from benchmarks.config import STUDIES_DIR


def write_study(tmp_path: Path, name: str = "study", base: str = "table2", **changes: object) -> str:
    """``studies/<base>.yaml`` with ``changes`` applied at its top level, written to
    ``tmp_path/<name>.yaml``; ``study`` (its name) is set to ``name``. Returns the path."""
    raw = yaml.safe_load((STUDIES_DIR / f"{base}.yaml").read_text())
    raw.update({"study": name, **changes})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def smoke_budget(iterations: int) -> dict[str, int]:
    """A study's ``budget`` with ``iterations`` under the smoke profile (the others as Table 2's)."""
    return {"smoke": iterations, "cpu": 600, "paper": 33000}


def cell_runs(uri: str, experiment: str) -> pd.DataFrame:
    """The runs of ``experiment`` in the store at ``uri`` that are cells (they carry a run key)."""
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    return runs[runs["tags.run_key"].notna()]
