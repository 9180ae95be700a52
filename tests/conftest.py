"""Shared fixtures: a tiny synthetic dataset on disk and an isolated MLflow store per test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.data.synthetic import SyntheticAbdomen, write_cohort


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete synthetic cohort (AMOS split sizes) at 16x16x16, generated once per session."""
    return write_cohort(SyntheticAbdomen(), tmp_path_factory.mktemp("cohort") / "tiny", (16, 16, 16))


@pytest.fixture
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny cohort that a test may corrupt."""
    return Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store, exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
