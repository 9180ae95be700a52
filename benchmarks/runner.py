"""Run a study: every requested (method, seed) cell trained once under the profile's budget,
evaluated and logged to MLflow.

Each cell is claimed before it is trained (:mod:`benchmarks.claims`), so several launchers on one
store train it once; its training state is checkpointed every ``checkpoint_every`` iterations
(:mod:`benchmarks.checkpoint`), so a launch killed in any way resumes where it stopped when run
again; SIGINT / SIGTERM mark the run and the launch KILLED (:mod:`benchmarks.interrupt`). A crash
marks the run FAILED. Only a run that trained and evaluated to the end is FINISHED.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from benchmarks.checkpoint import CheckpointStore
from benchmarks.claims import Busy, Claimed, Finished, Heartbeat, acquire, process_identity
from benchmarks.launch import (Launch, diverged_reason, diverged_runs, finished_run, preflight, retire_stale_launches,
                               run_sequential)
from benchmarks.config import Profile, Study
from benchmarks.data import Case, read_case
from benchmarks.errors import ConfigError, OrganbenchError
from benchmarks.eval_stage import evaluate_cell
from benchmarks.interrupt import Interrupted, StopSignals
from benchmarks.plan import Cell, StudyPlan
from benchmarks.run_record import cell_tags, say
from benchmarks.tracking import RunLog, ensure_experiment, git_state, setup_tracking
from benchmarks.train_stage import reuse_training, train_cell
from benchmarks.training import TrainingDiverged
from benchmarks.weights import find_training

KILLED, FAILED, FINISHED = (RunStatus.to_string(s) for s in (RunStatus.KILLED, RunStatus.FAILED, RunStatus.FINISHED))


class StudyRunner:
    """Loads the data once and runs the requested cells of one study under one profile.

    Args:
        checkpoint_dir: where training checkpoints go (default ``$ORGANBENCH_CHECKPOINT_DIR`` or
            ``checkpoints/``); checkpoints of finished runs are removed unless ``keep_checkpoints``.
        wait: when another launcher holds a cell, wait for it (and take it over if its claim goes
            stale) instead of skipping it.
        retry_diverged: train again the cells whose run diverged (a non-finite loss). By default such a
            cell is done: its run key fixes everything that determines the result, so it would diverge
            again (its run stays FAILED with the tags ``diverged_at_step`` and ``error``).
        evaluate_only: score finished trainings only (``evaluate``): a cell without one is listed in
            ``untrained`` and left alone.
        on_progress: ``on_progress(run_key, phase, done, total)`` after every training iteration
            (phase ``"train"``, iterations) and once when the evaluation starts (``"evaluation"``); the
            Ray launcher's workers report through it to the driver's per-run bars.
    """

    def __init__(self, study: Study, profile: Profile, methods: list[str] | None = None,
                 seeds: list[int] | None = None, data_dir: str | Path | None = None, progress: bool = True,
                 tracking_uri: str | None = None, checkpoint_dir: str | Path | None = None,
                 keep_checkpoints: bool = False, wait: bool = False, retry_diverged: bool = False,
                 on_progress: Callable[[str, str, int, int], None] | None = None, evaluate_only: bool = False) -> None:
        self.plan = StudyPlan(study, profile, methods, seeds, data_dir, progress)
        self.on_progress = on_progress
        self.study, self.profile, self.progress = study, profile, progress
        self.dataset, self.splits = self.plan.dataset, self.plan.splits
        self.checkpoints = CheckpointStore(checkpoint_dir)
        preflight(profile, self.checkpoints)
        self.keep_checkpoints, self.wait, self.retry_diverged = keep_checkpoints, wait, retry_diverged
        self.tracking_uri = setup_tracking(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self._cases: dict[str, Case] = {}
        self.evaluate_only, self.untrained = evaluate_only, []

    # -- resolution ---------------------------------------------------------------------------
    def unavailable(self) -> dict[str, str]:
        """Entries whose inputs are absent (e.g. text-encoder weights), with the reason."""
        absent = {}
        for name in self.plan.methods:
            cls = self.plan.method_classes[name]
            try:
                cls.check_available(cls.Config(**self.plan.configs[name]))
            except OrganbenchError as exc:
                absent[name] = str(exc)
        return absent

    def cases(self, ids: list[str]) -> list[Case]:
        for case_id in ids:
            if case_id not in self._cases:
                self._cases[case_id] = read_case(self.dataset, case_id)
        return [self._cases[i] for i in ids]

    # -- the launch ---------------------------------------------------------------------------
    def prepare(self) -> Launch:
        """Everything a launcher does once before dispatching cells: refuse absent inputs, create the
        experiment, retire launches that died, note ad-hoc cells, look up finished ones and, when
        something is left to train, read every case (bad data fails before any run exists) and
        create the launch's parent run."""
        absent = self.unavailable()
        for name, reason in absent.items():
            say(f"[absent] {name}: {reason}")
        if absent and not self.study.skip_unavailable:
            raise ConfigError(f"{self.study.path}: cannot run {sorted(absent)}: " + "; ".join(absent.values()))
        experiment_id = ensure_experiment(self.study.experiment_name)
        retire_stale_launches(self.client, experiment_id)
        cells = [c for c in self.plan.cells() if c.method not in absent]
        own = {c.run_key for c in self.plan.study_cells()}
        for cell in cells:
            if cell.run_key not in own:
                say(f"[ad hoc] {cell.name} is not a cell of study {self.study.study} under profile "
                    f"{self.profile.name} (its seeds: {self.plan.study_seeds}); it is recorded but not shown in "
                    "the study's tables")
        launch = Launch(experiment_id, cells, {c.run_key: finished_run(self.client, experiment_id, c.run_key) for c in cells})
        if self.evaluate_only:  # `evaluate`: only cells whose training exists somewhere in the store
            launch.cells = [c for c in cells if launch.finished[c.run_key] or self._trained_elsewhere(c)]
        if not self.retry_diverged:
            launch.diverged = diverged_runs(self.client, experiment_id, {c.run_key for c in launch.todo})
        if launch.todo:
            self.cases(self.splits["train"] + self.splits["test"] + self.splits.get("eval", []))
            launch.parent = RunLog(self.client.create_run(
                experiment_id, run_name=f"launch-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={"launch": "true", "profile": self.profile.name, "study": self.study.experiment_name,
                      "launched_study": self.study.study,
                      "data_digest": self.plan.data_digest, "heartbeat": f"{time.time():.3f}",
                      **process_identity(), **git_state()}).info.run_id, self.client)
        return launch

    def run(self, dispatch: Callable[["StudyRunner", Launch], list[dict[str, Any]]] | None = None
            ) -> list[dict[str, Any]]:
        """Run every requested cell not finished yet; returns one outcome dict per cell.

        ``dispatch(runner, launch)`` trains the launch's unfinished cells and returns their outcomes:
        None is this process, cell after cell; :func:`benchmarks.launchers.run_on_ray` (with its
        options bound) one Ray task per cell. Every dispatch trains a cell with :meth:`run_cell`, so
        launchers depend on the runner and never the other way round.
        """
        launch = self.prepare()
        results = []
        for cell in launch.cells:
            if launch.finished[cell.run_key]:
                say(f"[skip] {cell.name}: finished run {launch.finished[cell.run_key]} has run_key {cell.run_key}")
                results.append(self._outcome(cell, "finished", launch.finished[cell.run_key]))
            elif cell.run_key in launch.diverged:
                run_id, reason = launch.diverged[cell.run_key]
                say(f"[skip] {cell.name}: run {run_id} of this run key diverged ({reason}); "
                    "--retry-diverged trains it again")
                results.append(self._outcome(cell, "diverged", run_id, reason=reason))
        if launch.parent is None:
            return results
        status = FAILED
        with Heartbeat(self.tracking_uri) as heartbeat, StopSignals() as signals:
            heartbeat.track(launch.parent.run_id)
            try:
                if dispatch is None:
                    results += run_sequential(self, launch, heartbeat, signals)
                else:
                    results += dispatch(self, launch)
                status = FAILED if any(r["status"] == "failed" for r in results) else FINISHED
            except Interrupted:
                status = KILLED
                raise
            finally:
                heartbeat.untrack(launch.parent.run_id)
                launch.parent.end(status)
        return results

    def progress_bar(self, total: int) -> tqdm:
        """The bar over the launch's cells (elapsed time and ETA from the cells done so far)."""
        return tqdm(total=total, desc=f"{self.study.study} [{self.profile.name}] cells", unit="cell",
                    disable=not self.progress, position=0, dynamic_ncols=True,
                    bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed, ETA {remaining}")

    def _trained_elsewhere(self, cell: Cell) -> bool:
        if find_training(self.client, cell.training_key) is not None:
            return True
        self.untrained.append(cell)
        say(f"[untrained] {cell.name}: no finished training with logged weights has training key "
            f"{cell.training_key}; `run` trains it")
        return False

    def _outcome(self, cell: Cell, status: str, run_id: str, **extra: Any) -> dict[str, Any]:
        return {"method": cell.method, "seed": cell.seed, "run_key": cell.run_key, "run_id": run_id,
                "status": status, "skipped": status != "trained", **extra}

    # -- one cell -----------------------------------------------------------------------------
    def run_cell(self, cell: Cell, experiment_id: str, parent_id: str | None = None,
                 heartbeat: Heartbeat | None = None, signals: StopSignals | None = None) -> dict[str, Any]:
        """Claim, train (resuming from a checkpoint when there is one), evaluate and log one cell."""
        run_name = f"{cell.method}-seed{cell.seed}" + (f"-it{cell.iterations}" if self.study.budget_scales else "")
        signals = signals or StopSignals()
        with signals.deferred():  # a signal while the claim is made: the claim completes, then is KILLED
            claim = acquire(self.client, experiment_id, cell.run_key, run_name, cell_tags(cell, self.plan), parent_id)
        if signals.should_stop():
            stop = Interrupted(signals.signum or 15, " while claiming the cell")
            if isinstance(claim, Claimed):
                claimed = RunLog(claim.run_id, self.client)
                claimed.tags({"killed_reason": f"{stop.name} received{stop.detail}"})
                claimed.end(KILLED)
            raise stop
        if isinstance(claim, Finished):
            say(f"[skip] {cell.name}: finished run {claim.run_id} has run_key {cell.run_key}")
            return self._outcome(cell, "finished", claim.run_id)
        if isinstance(claim, Busy):
            say(f"[running elsewhere] {cell.name}: claimed by {claim.holder}; "
                  f"{'waiting for it' if self.wait else 'skipped (rerun, or pass --wait, once it ends)'}")
            return self._outcome(cell, "busy", claim.run_id)
        log = RunLog(claim.run_id, self.client)
        if heartbeat is not None:
            heartbeat.track(log.run_id)
        try:
            summary, wall = self._train_or_reuse(cell, log, signals)
        except Interrupted as exc:
            log.tags({"killed_reason": f"{exc.name} received{exc.detail}"})
            log.end(KILLED)
            raise
        except TrainingDiverged as exc:  # a result of the configuration: recorded, and the launch goes on
            log.tags({"error": f"{type(exc).__name__}: {exc}"[:5000], "diverged_at_step": str(exc.step)})
            log.end(FAILED)
            if not self.keep_checkpoints:
                self.checkpoints.remove(cell.run_key)
            reason = diverged_reason(exc.step)
            say(f"[diverged] {cell.study.study} {cell.method} seed {cell.seed}: {reason}, run {log.run_id}")
            return self._outcome(cell, "diverged", log.run_id, reason=reason)
        except BaseException as exc:
            log.tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
            log.end(FAILED)
            raise
        finally:
            if heartbeat is not None:
                heartbeat.untrack(log.run_id)
        log.end(FINISHED)
        if not self.keep_checkpoints:
            self.checkpoints.remove(cell.run_key)
        say(f"[done] {cell.study.study} {cell.method:14s} seed {cell.seed}: Dice {summary['test/dice_mean']:.2f} "
            f"(large {summary['test/dice_large']:.2f}, small {summary['test/dice_small']:.2f}), "
            f"ASD {summary['test/asd_mean']:.2f}, {wall:.0f}s, run {log.run_id}")
        return self._outcome(cell, "trained", log.run_id, wall_s=wall, **summary)

    def _train_or_reuse(self, cell: Cell, log: RunLog, signals: StopSignals) -> tuple[dict[str, float], float]:
        """The cell's training (a finished one of its training key anywhere in the store, else trained
        now), then its evaluation."""
        start = time.time()
        source = find_training(self.client, cell.training_key)
        if source is None:
            trained = train_cell(cell, self, log, signals)
        else:
            say(f"[reuse] {cell.name}: training {source} has training key {cell.training_key}; evaluating it")
            trained = reuse_training(cell, self, log, source)
        return evaluate_cell(cell, self, log, trained), time.time() - start
