"""Shared fixtures: a tiny synthetic dataset on disk and an isolated MLflow store per test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.data.synthetic import SyntheticAbdomen, write_cohort

# The `slow` tier (`make test` runs it, `make test-fast` leaves it out): tests that start servers,
# clusters, browsers or databases, or run whole studies end to end. Whole modules here; single tests
# elsewhere carry @pytest.mark.slow.
SLOW_MODULES = frozenset({"test_ray", "test_mlflow_server", "test_mlflow_postgres", "test_run_integrity",
                          "test_reports", "test_ablation", "test_realdata", "test_new_method", "test_cli",
                          "test_reliability", "test_channels_last"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete synthetic cohort (AMOS split sizes) at 16x16x16, generated once per session."""
    return write_cohort(SyntheticAbdomen(), tmp_path_factory.mktemp("cohort") / "tiny", (16, 16, 16))


@pytest.fixture
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny cohort that a test may corrupt."""
    return Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file holding MLflow's schema and no run (the migrations take seconds: run them once)."""
    from mlflow.tracking import MlflowClient
    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store_file: Path) -> str:
    """A fresh SQLite MLflow store (a copy of the empty template), exported as MLFLOW_TRACKING_URI."""
    shutil.copyfile(empty_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def isolated_run_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Checkpoints under the test's own folder; a short claim settle time (the concurrency tests set
    the default back)."""
    monkeypatch.setenv("ORGANBENCH_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("ORGANBENCH_CLAIM_SETTLE_S", "0.02")
    return tmp_path / "checkpoints"
