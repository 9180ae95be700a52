"""A real ``mlflow server``: start/health/stop, a study logged through it, four concurrent writers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from benchmarks.cli import main
from mlflow_server.server import ServerConfig, healthy, start, status, stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EMBEDDED_RUN = "made-without-a-server"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A server started on a root that already holds an embedded store with one run (as `make mlflow`
    finds mlruns/ after `make table2`)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    from benchmarks.tracking import ensure_experiment, setup_tracking
    setup_tracking(f"sqlite:///{root / 'mlflow.db'}")
    with mlflow.start_run(experiment_id=ensure_experiment("embedded"), run_name=EMBEDDED_RUN):
        mlflow.log_metric("test/dice_mean", 12.5)
        mlflow.log_text("case_id,dice\nx,12.5\n", "eval/per_case.csv")
    config = ServerConfig(port=free_port(), root=root)
    url = start(config)
    yield config, url
    stop(config)


def test_serves_the_embedded_store(server) -> None:
    _, url = server
    mlflow.set_tracking_uri(url)
    runs = mlflow.search_runs(experiment_names=["embedded"])
    assert list(runs["tags.mlflow.runName"]) == [EMBEDDED_RUN] and runs["metrics.test/dice_mean"].iloc[0] == 12.5
    text = mlflow.artifacts.load_text(f"runs:/{runs['run_id'].iloc[0]}/eval/per_case.csv")
    assert "x,12.5" in text


def _group_commands(pgid: int) -> list[str]:
    """Command lines of the live processes in process group ``pgid``."""
    commands = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    commands.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, ProcessLookupError):
                continue
    return commands


def test_start_is_healthy_and_idempotent_without_mlflows_job_runner(server) -> None:
    config, url = server
    assert healthy(url) and config.pid_file.is_file()
    assert start(config) == url  # already running: reported, not started twice
    assert "healthy" in status(config)
    commands = _group_commands(int(json.loads(config.pid_file.read_text())["pid"]))
    assert any("mlflow" in c and "server" in c for c in commands), commands
    assert not any("huey_consumer" in c for c in commands), commands  # seven idle job processes otherwise


def test_study_logs_through_the_server(server, tiny_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert main(["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised",
                 "--seeds", "0,1", "--no-progress"]) == 0
    mlflow.set_tracking_uri(url)
    runs = mlflow.search_runs(experiment_names=["table2"], filter_string="attributes.status = 'FINISHED'")
    cells = runs[runs["tags.run_key"].notna()]
    assert len(cells) == 2 and cells["metrics.test/dice_mean"].notna().all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(cells["run_id"].iloc[0], "eval")}
    assert "eval/per_case.csv" in artifacts  # artifacts go through the server's proxy


WORKER = textwrap.dedent("""
    import sys, mlflow
    from benchmarks.tracking import ensure_experiment
    worker = int(sys.argv[1])
    experiment_id = ensure_experiment("concurrency")  # the harness's path (runner, cost study)
    for r in range(2):
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"w{worker}-r{r}", tags={"worker": str(worker)}):
            mlflow.log_params({f"p{i}": f"{worker}-{r}-{i}" for i in range(10)})
            for step in range(20):
                mlflow.log_metrics({f"m{k}": worker * 1000 + r * 100 + step + k / 10 for k in range(5)}, step=step)
""")


def test_four_concurrent_writers_lose_nothing(server, tmp_path: Path) -> None:
    _, url = server
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    workers = [subprocess.Popen([sys.executable, str(script), str(w)], env=env, stderr=subprocess.PIPE, text=True)
               for w in range(4)]
    for process in workers:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    mlflow.set_tracking_uri(url)
    runs = mlflow.search_runs(experiment_names=["concurrency"])
    assert len(runs) == 8 and set(runs["status"]) == {"FINISHED"}
    assert mlflow.search_runs(experiment_ids=["0"]).empty  # nothing misplaced in Default
    client = mlflow.MlflowClient()
    for run in runs.itertuples():
        data = client.get_run(run.run_id).data
        worker, r = int(data.tags["worker"]), int(data.tags["mlflow.runName"][-1])
        assert data.params == {f"p{i}": f"{worker}-{r}-{i}" for i in range(10)}
        for k in range(5):
            history = client.get_metric_history(run.run_id, f"m{k}")
            assert sorted(m.step for m in history) == list(range(20))
            assert {m.value for m in history} == {worker * 1000 + r * 100 + s + k / 10 for s in range(20)}


def test_two_launchers_through_the_server_train_a_cell_once(server, tiny_cohort: Path, tmp_path: Path) -> None:
    from test_run_integrity import finish, launch, long_study, run_args
    _, url = server
    study = long_study(tmp_path, study="server-race")
    env = {"MLFLOW_TRACKING_URI": url, "ORGANBENCH_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "ORGANBENCH_CLAIM_SETTLE_S": "1"}
    outcomes = [finish(p) for p in [launch(run_args(study, tiny_cohort), env) for _ in range(2)]]
    assert [c for c, _, _ in outcomes] == [0, 0], [e for _, _, e in outcomes]
    mlflow.set_tracking_uri(url)
    runs = mlflow.search_runs(experiment_names=["server-race"])
    cells = runs[runs["tags.run_key"].notna()]
    assert (cells["status"] == "FINISHED").sum() == 1
    summaries = [out.strip().splitlines()[-1] for _, out, _ in outcomes]
    assert sum("1 run(s) trained" in s for s in summaries) == 1, summaries
    assert sum("running elsewhere" in s or "1 already finished" in s for s in summaries) == 1, summaries


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ORGANBENCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / ".artifacts"))


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_lists_runs_with_dice_and_compares_two(server, tiny_cohort: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Headless Chromium drives the MLflow UI of the server holding the smoke study."""
    from playwright.sync_api import sync_playwright
    _, url = server
    mlflow.set_tracking_uri(url)
    if mlflow.get_experiment_by_name("table2") is None:  # when run alone
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        main(["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised",
              "--seeds", "0,1", "--no-progress"])
    experiment = mlflow.get_experiment_by_name("table2").experiment_id
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runs_url = (f"{url}/#/experiments/{experiment}/runs?searchFilter=metrics.%60test%2Fdice_mean%60%20%3E%3D%200"
                "&orderByKey=metrics.%60test%2Fdice_mean%60&orderByAsc=false")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 2600, "height": 1000})  # the grid renders visible columns only
            page.goto(runs_url)
            for name in ("supervised-seed0", "supervised-seed1"):
                page.get_by_text(name).first.wait_for(timeout=60_000)
            page.get_by_role("button", name="Columns").click()
            page.get_by_placeholder("Search columns").fill("dice")
            for column in ("test/dice_mean", "test/dice/liver"):
                page.get_by_role("dialog").get_by_text(column, exact=True).click()
            page.keyboard.press("Escape")
            headers = page.get_by_role("columnheader").all_inner_texts()
            assert "test/dice_mean" in headers and "test/dice/liver" in headers, headers
            page.screenshot(path=str(ARTIFACTS / "mlflow_runs.png"))
            for box in page.get_by_role("checkbox").all()[1:3]:
                box.check()
            page.get_by_role("button", name="Compare").click()
            page.get_by_text("Comparing 2 Runs").wait_for(timeout=60_000)
            assert "compare-runs" in page.url
            for name in ("supervised-seed0", "supervised-seed1"):
                assert page.get_by_text(name).count() >= 1
            page.screenshot(path=str(ARTIFACTS / "mlflow_compare.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "mlflow_compare.png").stat().st_size > 10_000


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_opens_an_experiment_on_its_runs_and_a_run_shows_its_dataset_and_model(
        server, tiny_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make mlflow` as a user browses it: the experiment link it prints opens the training runs (not
    the GenAI traces view), and a run's page lists its dataset (with the digest) and its logged model."""
    from playwright.sync_api import sync_playwright
    from mlflow_server.server import experiment_links, run_link
    _, url = server
    mlflow.set_tracking_uri(url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    if mlflow.get_experiment_by_name("table2") is None:  # when run alone
        main(["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised",
              "--seeds", "0,1", "--no-progress"])
    experiment = mlflow.get_experiment_by_name("table2").experiment_id
    run = mlflow.search_runs([experiment], filter_string="tags.stage = 'training+evaluation'").iloc[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.goto(experiment_links(url)["table2"])
            page.get_by_text("launch-").first.wait_for(timeout=60_000)  # the launch's parent run, its cells below
            assert f"/experiments/{experiment}/runs" in page.url and "genai" not in page.url, page.url
            page.screenshot(path=str(ARTIFACTS / "mlflow_experiment.png"))
            page.goto(run_link(url, experiment, run["run_id"]))
            page.get_by_text("Logged models").first.wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "synthetic-amos" in body and run["tags.data_digest"][:16] in body  # the dataset and its digest
            assert run["tags.model_id"] in body  # the selected weights, as the run's model
            page.screenshot(path=str(ARTIFACTS / "mlflow_run.png"))
        finally:
            browser.close()


def test_stop_ends_exactly_that_process(server) -> None:
    """The module's server itself (this test is the module's last: starting another takes seconds)."""
    config, _ = server
    pid = int(json.loads(config.pid_file.read_text())["pid"])
    assert stop(config) is True
    assert not healthy(config.url) and not config.pid_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert stop(config) is False
