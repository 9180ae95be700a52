"""Run integrity: one FINISHED run per cell whatever happens to the launcher, resumption that gives
the numbers of an uninterrupted run, claims that exclude a second launcher, run keys that follow the
data and the code, and tables that show exactly the study's cells."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import PROJECT_ROOT, load_profile, load_study
from benchmarks.plan import StudyPlan
from tests.study_files import smoke_budget, write_study

BUDGET = 60  # smoke iterations: long enough to be interrupted after a checkpoint (every 5 iterations)


def long_study(tmp_path: Path, budget: int = BUDGET, **changes: object) -> str:
    """Table 2's study (its name kept) with the labeled-only bound alone at ``budget`` smoke iterations."""
    return write_study(tmp_path, "long", **{"study": "table2", "methods": ["supervised"],
                                            "budget": smoke_budget(budget), **changes})


def store(tmp_path: Path, name: str, template: Path | None = None) -> dict[str, str]:
    """The environment of a launch on its own SQLite store and checkpoint folder under ``tmp_path/name``;
    the store starts as a copy of ``template`` (an empty store: no migrations to run) when given."""
    folder = tmp_path / name
    if template is not None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, folder / "mlflow.db")
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
            "ORGANBENCH_CHECKPOINT_DIR": str(folder / "checkpoints"), "ORGANBENCH_CLAIM_SETTLE_S": "1"}


def launch(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks", *args], cwd=PROJECT_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def use_store(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Point this process (an in-process launch, and the processes it starts, which inherit it) at ``env``'s store."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def checkpoint_step(meta: Path) -> int:
    """The step a checkpoint's metadata names (-1 while it cannot be read, e.g. removed after its run)."""
    try:
        return int(json.loads(meta.read_text())["next_step"])
    except (OSError, ValueError, KeyError):
        return -1


def latest_checkpoint_step(folder: Path) -> int:
    """The latest step any checkpoint under ``folder`` names (-1 when none can be read)."""
    return max((checkpoint_step(meta) for meta in folder.glob("*/meta.json")), default=-1)


def wait_for_checkpoint(folder: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> int:
    """Poll the checkpoint metadata until a checkpoint at or after ``step`` exists; returns its step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        saved = latest_checkpoint_step(folder)
        if saved >= step:
            return saved
        assert process.poll() is None, f"launcher ended before a checkpoint: {process.communicate()}"
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def runs_of(env: dict[str, str], experiment: str = "table2") -> pd.DataFrame:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=[experiment])


def test_metrics(runs: pd.DataFrame) -> dict[str, float]:
    row = runs[runs["status"] == "FINISHED"].iloc[0]
    return {k: row[k] for k in runs.columns if k.startswith("metrics.test/")}


test_metrics.__test__ = False  # a helper, not a test


def run_args(study: str, cohort: Path) -> list[str]:
    return ["run", study, "--profile", "smoke", "--data", str(cohort), "--no-progress"]


def test_sigterm_then_kill_9_then_rerun_gives_the_numbers_of_an_uninterrupted_run(
        tiny_cohort: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, empty_store_file: Path) -> None:
    """SIGTERM: the run and the launch are KILLED, one line, exit 143. The rerun resumes and is killed
    with SIGKILL (no handler runs, everything stays RUNNING). The third launch resumes again and
    finishes: one FINISHED run whose metrics equal those of an uninterrupted run, bit for bit."""
    study = long_study(tmp_path)
    env = store(tmp_path, "interrupted", empty_store_file)
    checkpoints = Path(env["ORGANBENCH_CHECKPOINT_DIR"])
    process = launch(run_args(study, tiny_cohort), env)
    wait_for_checkpoint(checkpoints, 5, process)
    process.send_signal(signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 128 + signal.SIGTERM
    assert "Traceback" not in err
    line = [e for e in err.splitlines() if "interrupted" in e]
    assert len(line) == 1 and "SIGTERM" in line[0] and "resume" in line[0], err
    runs = runs_of(env)
    assert list(runs["status"]) == ["KILLED", "KILLED"]  # the cell and its launch
    assert "SIGTERM" in runs.loc[runs["tags.run_key"].notna(), "tags.killed_reason"].iloc[0]
    first_stop = int(json.loads(next(checkpoints.glob("*/meta.json")).read_text())["next_step"])

    process = launch(run_args(study, tiny_cohort), env)
    wait_for_checkpoint(checkpoints, first_stop + 10, process)
    process.kill()  # SIGKILL
    code, out, _ = finish(process)
    assert code == -signal.SIGKILL and f"[resume] supervised seed 0: from iteration {first_stop}" in out
    assert sorted(runs_of(env)["status"]) == ["KILLED", "KILLED", "RUNNING", "RUNNING"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("ORGANBENCH_CHECKPOINT_DIR", str(checkpoints))
    assert main(run_args(study, tiny_cohort)) == 0
    assert "[resume] supervised seed 0: from iteration" in capsys.readouterr().out
    after = runs_of(env)
    cells = after[after["tags.run_key"].notna()]
    assert (cells["status"] == "FINISHED").sum() == 1 and sorted(cells["status"]) == ["FINISHED", "KILLED", "KILLED"]
    assert any("is gone" in r for r in cells["tags.killed_reason"].dropna())  # the SIGKILLed claim, taken over
    launches = after[after["tags.launch"] == "true"]
    assert sorted(launches["status"]) == ["FINISHED", "KILLED", "KILLED"]
    assert not any(checkpoints.glob("*/checkpoint.pt"))  # removed once the run finished
    resumed = cells[cells["status"] == "FINISHED"].iloc[0]
    assert int(resumed["tags.resumed_from_step"]) > first_stop
    history = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_metric_history(resumed["run_id"], "train/loss")
    assert {m.step for m in history} >= {0, 5, BUDGET - 1}  # the whole curve, across the three attempts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("ORGANBENCH_CHECKPOINT_DIR", str(tmp_path / "reference-checkpoints"))
    assert main(run_args(study, tiny_cohort)) == 0  # the same cell, uninterrupted, in a fresh store
    expected = test_metrics(runs_of({"MLFLOW_TRACKING_URI": mlflow_store}))
    assert len(expected) > 30
    assert test_metrics(after) == expected  # bit-identical on the same machine


def test_two_launchers_on_a_new_sqlite_store_train_the_cell_once(tiny_cohort: Path, tmp_path: Path) -> None:
    study, env = long_study(tmp_path, budget=30), store(tmp_path, "race")
    processes = [launch(run_args(study, tiny_cohort), env) for _ in range(2)]
    outcomes = [finish(p) for p in processes]
    assert [c for c, _, _ in outcomes] == [0, 0], [e for _, _, e in outcomes]
    runs = runs_of(env)
    cells = runs[runs["tags.run_key"].notna()]
    assert (cells["status"] == "FINISHED").sum() == 1 and cells["tags.run_key"].nunique() == 1
    summaries = sorted(out.strip().splitlines()[-1] for _, out, _ in outcomes)
    trained = [s for s in summaries if "1 run(s) trained" in s]
    skipped = [s for s in summaries if "running elsewhere" in s or "1 already finished" in s]
    assert len(trained) == 1 and len(skipped) == 1, summaries


def _plan(study: str, cohort: Path, **kwargs: object) -> StudyPlan:
    return StudyPlan(load_study(study), load_profile("smoke"), data_dir=cohort, progress=False, **kwargs)


def _claim(env_uri: str, run_key: str, **tags: str) -> str:
    client = mlflow.MlflowClient(env_uri)
    from benchmarks.tracking import ensure_experiment, setup_tracking
    setup_tracking(env_uri)
    experiment = ensure_experiment("table2")
    return client.create_run(experiment, run_name="claim", tags={"run_key": run_key, "profile": "smoke", **tags}
                             ).info.run_id


def test_a_stale_claim_is_taken_over_and_a_live_one_is_respected(tiny_cohort: Path, tmp_path: Path,
                                                                  mlflow_store: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    study = long_study(tmp_path, budget=6)
    key = _plan(study, tiny_cohort).cells()[0].run_key
    live = _claim(mlflow_store, key, **{"claim.host": "other-machine", "heartbeat": f"{time.time():.0f}"})
    assert main(run_args(study, tiny_cohort)) == 0
    out = capsys.readouterr().out
    assert "[running elsewhere] supervised seed 0" in out and "other-machine" in out
    assert "0 run(s) trained, 0 already finished, 1 running elsewhere" in out
    client = mlflow.MlflowClient(mlflow_store)
    client.set_tag(live, "heartbeat", f"{time.time() - 3600:.0f}")  # its launcher stopped beating an hour ago
    assert main(run_args(study, tiny_cohort)) == 0
    assert "1 run(s) trained" in capsys.readouterr().out
    stale = client.get_run(live)
    assert stale.info.status == "KILLED" and "no heartbeat for" in stale.data.tags["killed_reason"]
    runs = runs_of({"MLFLOW_TRACKING_URI": mlflow_store})
    assert (runs["tags.run_key"].notna() & (runs["status"] == "FINISHED")).sum() == 1


def test_a_claim_of_a_dead_process_on_this_machine_is_taken_over_at_once(tiny_cohort: Path, tmp_path: Path,
                                                                         mlflow_store: str) -> None:
    from benchmarks.claims import process_identity
    study = long_study(tmp_path, budget=6)
    key = _plan(study, tiny_cohort).cells()[0].run_key
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = process_identity()
    claim = _claim(mlflow_store, key, **{**me, "claim.pid": str(gone.pid), "claim.pid_start": "1",
                                         "heartbeat": f"{time.time():.0f}"})
    assert main(run_args(study, tiny_cohort)) == 0
    assert mlflow.MlflowClient(mlflow_store).get_run(claim).info.status == "KILLED"


def test_run_key_follows_the_data_and_the_versions(tiny_cohort: Path, cohort_copy: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    study = long_study(tmp_path)
    original = _plan(study, tiny_cohort).cells()[0].run_key
    assert _plan(study, cohort_copy).cells()[0].run_key == original  # the same bytes elsewhere: the same key

    meta_path = cohort_copy / "dataset.json"
    meta = json.loads(meta_path.read_text())
    for change in ({"intensity_window": [-100.0, 240.0]}, {"preprocessing": "dhc"}):
        meta_path.write_text(json.dumps({**meta, **change}))
        assert _plan(study, cohort_copy).cells()[0].run_key != original, change
    meta_path.write_text(json.dumps(meta))
    assert _plan(study, cohort_copy).cells()[0].run_key == original  # reverted: the old key again

    image_path = cohort_copy / "imagesTr" / "syn_0301_0000.nii.gz"  # one test case
    image = nib.load(str(image_path))
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] += 1
    nib.save(nib.Nifti1Image(data, image.affine), str(image_path))
    assert _plan(study, cohort_copy).cells()[0].run_key != original

    from methods import get_method
    monkeypatch.setattr(get_method("supervised"), "version", "2")
    assert _plan(study, tiny_cohort).cells()[0].run_key != original
    monkeypatch.setattr("benchmarks.plan.HARNESS_VERSION", "999")
    assert _plan(study, tiny_cohort).cells()[0].run_key != original


def test_tables_show_exactly_the_study_cells(tiny_cohort: Path, tmp_path: Path, mlflow_store: str,
                                            capsys: pytest.CaptureFixture) -> None:
    """An override added, run and removed again, and ad-hoc seeds, never enter the study's table."""
    default = long_study(tmp_path, budget=4)
    override = str(tmp_path / "override.yaml")
    raw = yaml.safe_load(Path(default).read_text())
    Path(override).write_text(yaml.safe_dump({**raw, "method_overrides": {"supervised": {"lr": 0.05}}}))
    assert main(run_args(default, tiny_cohort)) == 0
    assert main(run_args(override, tiny_cohort)) == 0  # newer, another configuration of the same cell
    assert main(run_args(default, tiny_cohort) + ["--seeds", "7,8,8"]) == 0  # ad hoc, 8 given twice
    out = capsys.readouterr().out
    assert "[ad hoc] supervised seed 7" in out and "2 run(s) trained" in out  # seed 8 trained once
    runs = runs_of({"MLFLOW_TRACKING_URI": mlflow_store})
    cells = runs[runs["tags.run_key"].notna()]
    assert len(cells) == 4
    first = cells.sort_values("start_time").iloc[0]

    assert main(["report", default, "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(tmp_path / "o")]) == 0
    table = pd.read_csv(tmp_path / "o" / "table2.csv", header=[0, 1], index_col=0)
    assert list(table.index) == ["V-Net (labeled only)"]
    assert table[("dice_percent", "All")].iloc[0] == pytest.approx(
        np.mean([first[c] for c in cells.columns if c.startswith("metrics.test/dice/")]))
    assert table[("seeds", "finished")].iloc[0] == 1
    md = (tmp_path / "o" / "table2.md").read_text()
    assert "Not part of this study (3 finished run(s)" in md
    assert "seeds 7, 8): seed not in the study" in md
    assert "another configuration, data or code version of a study cell" in md


def test_a_diverged_cell_is_recorded_the_launch_goes_on_and_it_is_not_trained_again(
        tiny_cohort: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A non-finite loss is a result of the configuration: the run is FAILED with the iteration, the
    other cells still train, the launch exits 0, a rerun does not train it again (unless asked to) and
    the table names it instead of calling it not finished."""
    from methods import get_method
    study = long_study(tmp_path, budget=6, methods=["supervised", "fully"])
    cls = get_method("supervised")  # `fully` subclasses it: only the labeled-only runs diverge
    original = cls.train_step

    def diverging(self, batch, step):  # type: ignore[no-untyped-def]
        logs = original(self, batch, step)
        return {**logs, "loss": float("nan")} if self.name == "supervised" and step == 3 else logs

    monkeypatch.setattr(cls, "train_step", diverging)
    assert main(run_args(study, tiny_cohort)) == 0
    out = capsys.readouterr().out
    assert "1 run(s) trained" in out and "1 diverged: supervised seed 0: non-finite loss at step 3" in out
    runs = runs_of({"MLFLOW_TRACKING_URI": mlflow_store}).set_index("tags.method")
    assert runs.loc["supervised", "status"] == "FAILED" and runs.loc["supervised", "tags.diverged_at_step"] == "3"
    assert runs.loc["fully", "status"] == "FINISHED"
    assert main(run_args(study, tiny_cohort)) == 0  # the diverged cell counts as done
    assert "[skip] supervised seed 0: run " in capsys.readouterr().out
    assert len(runs_of({"MLFLOW_TRACKING_URI": mlflow_store})) == 3  # 2 cells + the first launch's parent
    out_dir = tmp_path / "o"
    assert main(["report", study, "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(out_dir)]) == 0
    md = (out_dir / "table2.md").read_text()
    assert "Diverged, a non-finite loss (1 of 2 cells, not shown): supervised seed 0 (at iteration 3)." in md
    assert "Not finished yet" not in md

    monkeypatch.setattr(cls, "train_step", original)
    assert main(run_args(study, tiny_cohort) + ["--retry-diverged"]) == 0
    assert "1 run(s) trained, 1 already finished" in capsys.readouterr().out
    assert main(["report", study, "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(out_dir)]) == 0
    assert "Diverged" not in (out_dir / "table2.md").read_text()


def test_summary_counts_all_background_cases() -> None:
    from benchmarks.data import DatasetInfo
    from benchmarks.evaluation import summarize
    info = DatasetInfo(Path("."), "d", ("background", "liver", "spleen"), ("liver",), (0.0, 1.0), True)
    per_case = pd.DataFrame({"case_id": ["a", "a", "b", "b", "c", "c"], "organ": ["liver", "spleen"] * 3,
                             "dice": [0.0, 0.0, 50.0, 10.0, 0.0, 0.0], "asd": [0.0, 0.0, 3.0, 9.0, 0.0, 0.0],
                             "pred_voxels": [0, 0, 120, 120, 0, 0]})
    assert summarize(per_case, info)["test/cases_all_background"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stop_signals_defer_inside_training_and_raise_outside() -> None:
    from benchmarks.interrupt import Interrupted, StopSignals
    with StopSignals() as signals:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert signals.should_stop() and signals.signum == signal.SIGINT  # recorded, not raised
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert info.value.name == "SIGTERM" and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_train_checkpoints_at_the_boundary_then_stops() -> None:
    from benchmarks.data import Case
    from benchmarks.training import StopRequested, TwoStreamSampler, train
    from methods import get_method
    cases = [Case(f"c{i}", np.full((16, 16, 16), i / 4, np.float32), np.full((16, 16, 16), i % 3, np.uint8),
                  (1.0, 1.0, 1.0)) for i in range(3)]
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=2, dropout=False), 3, max_iterations=20)
    sampler = TwoStreamSampler(cases, [], 2, 0, (16, 16, 16), seed=0, policy="labeled_only")
    saved: list[int] = []
    steps_done = itertools.count(1)  # should_stop is asked once after every step
    with pytest.raises(StopRequested) as info:
        train(method, sampler, 20, progress=False, checkpoint_every=4, on_checkpoint=saved.append,
              should_stop=lambda: next(steps_done) >= 6)
    assert saved == [4, 6] and info.value.next_step == 6  # periodic at 4, then at the stop boundary
