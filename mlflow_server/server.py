"""Start, check and stop a real ``mlflow server`` in front of the embedded store.

By default the server serves the very store the harness writes without a server
(``mlruns/mlflow.db``, artifacts under ``mlruns/artifacts``), so its UI shows the runs a user
already has; ``--backend-store-uri`` (or ``MLFLOW_BACKEND_STORE_URI``) points it elsewhere, e.g. at
PostgreSQL for many concurrent writers.

``python -m mlflow_server start`` launches the server in the background on 127.0.0.1, waits until
``GET /health`` answers ``OK``, writes a pid file and prints the URL to export as
``MLFLOW_TRACKING_URI``; ``stop`` terminates exactly the process named in the pid file (and its
workers). A server that is already running is reported, not started twice.

MLflow's job runner (seven ``huey_consumer`` processes for its GenAI evaluation jobs, which the suite
never submits) is left off: on a 2-core machine it takes CPU from the training beside the server. The
user's own ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` wins when set.

The pid file is trusted only as far as it can be checked (:func:`_verified_pid`): ``stop`` signals a
process group only when its leader is alive, has a pid above 1 that is not this process's own group,
was started at the time the pid file records, and runs ``mlflow server`` on this port. A stale, foreign,
edited or unreadable pid file is removed and nothing is signalled.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """The server could not be started, checked or stopped."""


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens and stores runs."""

    host: str = "127.0.0.1"
    port: int = 5000
    root: Path = PROJECT_ROOT / "mlruns"
    backend_store_uri: str | None = None  # default: sqlite:///<root>/mlflow.db (the embedded store)
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / f"mlflow-server-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.root / f"mlflow-server-{self.port}.log"

    @property
    def backend(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        """Where runs logged through the server put artifacts: beside the embedded store's."""
        return self.root / "artifacts"


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET <url>/health`` answers 200 ``OK``."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError):
        return False


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _verified_pid(config: ServerConfig) -> int | None:
    """The pid in ``config.pid_file`` if it is the server this module started there, else None.

    Checked: an integer above 1, not this process's own group, alive, a process-group leader (it was
    started in its own session), the start time recorded in the pid file, and a command line of
    ``mlflow server ... --port <port>``.
    """
    try:
        record = json.loads(config.pid_file.read_text())
        pid, started = record["pid"], record.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid in (os.getpid(), os.getpgrp()):
        return None
    try:
        if os.getpgid(pid) != pid:
            return None
    except OSError:
        return None
    if started is None or _start_time(pid) != started:
        return None
    command = _command_line(pid)
    listens = "--port" in command and command[command.index("--port") + 1:][:1] == [str(config.port)]
    return pid if "mlflow" in command and "server" in command and listens else None


def _running_pid(config: ServerConfig) -> int | None:
    return _verified_pid(config)


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (nothing listens there)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def start(config: ServerConfig = ServerConfig(), wait_s: float = 90.0) -> str:
    """Start the server (if not running) and wait for /health; returns its URL."""
    config.root.mkdir(parents=True, exist_ok=True)
    if _running_pid(config) and healthy(config.url):
        return config.url
    if healthy(config.url):
        raise ServerError(f"{config.url} already answers but was not started from {config.pid_file}; "
                          "choose another port (MLFLOW_PORT=...)")
    if not _port_free(config.host, config.port):
        raise ServerError(f"port {config.port} on {config.host} is in use by another program (not an MLflow server "
                          "started here); choose another port (MLFLOW_PORT=... or --server-port)")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", config.backend,
               "--artifacts-destination", str(config.artifacts), "--host", config.host,
               "--port", str(config.port), "--workers", str(config.workers)]
    log = open(config.log_file, "ab")
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # no job runner unless asked for
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               cwd=config.root, env=env)
    config.pid_file.write_text(json.dumps({"pid": process.pid, "started": _start_time(process.pid),
                                           "url": config.url, "backend": config.backend}))
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if process.poll() is not None:
            config.pid_file.unlink(missing_ok=True)
            raise ServerError(f"mlflow server exited with code {process.returncode}; see {config.log_file}")
        if healthy(config.url):
            return config.url
        time.sleep(0.5)
    stop(config)
    raise ServerError(f"mlflow server did not answer {config.url}/health within {wait_s:.0f}s; see {config.log_file}")


def stop(config: ServerConfig = ServerConfig(), wait_s: float = 20.0) -> bool:
    """Terminate the server named in the pid file (its whole process group); False if none ran.

    A pid file that does not name a server started here (:func:`_verified_pid`) is removed, and
    nothing is signalled."""
    pid = _verified_pid(config)
    config.pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if _reaped_or_gone(pid):
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    _reaped_or_gone(pid)
    return True


def _reaped_or_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (reaping it when it is our own child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
    except ChildProcessError:  # started by another process (make mlflow): init reaps it
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def status(config: ServerConfig = ServerConfig()) -> str:
    pid = _running_pid(config)
    state = "healthy" if healthy(config.url) else "not answering"
    return f"{config.url}: {state}" + (f" (pid {pid}, backend {config.backend})" if pid else " (no pid file)")


# The MLflow 3.17 UI starts in its GenAI mode (a traces dashboard) until a link or the user switches it;
# these links open the model-training views, which show runs, their datasets and their logged models.
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_links(url: str) -> dict[str, str]:
    """Experiment name -> the link that opens its training runs in the UI of the server at ``url``
    (experiments with at least one run; the empty Default one is left out)."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(url)
    links = {}
    for experiment in client.search_experiments():
        if client.search_runs([experiment.experiment_id], max_results=1):
            links[experiment.name] = f"{url}/#/experiments/{experiment.experiment_id}/runs?{TRAINING_VIEW}"
    return links


def run_link(url: str, experiment_id: str, run_id: str) -> str:
    """The link to one run's page (metrics, parameters, its dataset and logged model) in the training view."""
    return f"{url}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
