"""The team setup: an MLflow server on a PostgreSQL backend store, started by the test itself from
Debian's PostgreSQL (skipped with the reason where it cannot start)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import mlflow
import pytest

from mlflow_server.server import ServerConfig, start, stop

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
pytestmark = pytest.mark.skipif(not BIN, reason="Debian's postgresql is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*command: str) -> list[str]:
    """Run as the ``postgres`` user when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture(scope="module")
def postgres():
    data = Path(tempfile.mkdtemp(prefix="organbench-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    bin_dir = Path(BIN[-1])
    try:
        subprocess.run(as_postgres(str(bin_dir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"),
                       check=True, capture_output=True)
        subprocess.run(as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                                   "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"),
                       check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {exc}")
    subprocess.run(as_postgres(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                               "mlflow"), check=True, capture_output=True)
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
    subprocess.run(as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"),
                   capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


def test_server_on_postgres_backend(postgres: str, tmp_path: Path) -> None:
    config = ServerConfig(port=free_port(), root=tmp_path, backend_store_uri=postgres)
    url = start(config)
    try:
        mlflow.set_tracking_uri(url)
        experiment = mlflow.create_experiment("postgres-check")
        with mlflow.start_run(experiment_id=experiment, run_name="pg") as run:
            mlflow.log_params({"method": "dhc", "seed": 0})
            for step in range(5):
                mlflow.log_metric("train/loss", 1.0 / (step + 1), step=step)
            mlflow.log_metric("test/dice_mean", 42.5)
        data = mlflow.MlflowClient().get_run(run.info.run_id).data
        assert data.params == {"method": "dhc", "seed": "0"} and data.metrics["test/dice_mean"] == 42.5
        assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")) == 5
        with psycopg.connect(postgres.replace("postgresql+psycopg", "postgresql")) as conn:
            names = [row[0] for row in conn.execute("select name from experiments")]
        assert "postgres-check" in names  # the runs really live in PostgreSQL
    finally:
        stop(config)
