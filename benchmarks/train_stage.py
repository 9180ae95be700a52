"""The training stage of a cell: build the method, train it (resuming from a checkpoint), select the
model, log the selected weights. The loop's concerns are hooks around :func:`benchmarks.training.train`:
checkpoints (``on_checkpoint``), model selection and progress (``after_step``), the loss curve
(``on_log``) and a stop request (``should_stop``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from mlflow.tracking import MlflowClient

from benchmarks import selection
from benchmarks.checkpoint import CheckpointStore, TrainingState, rng_state, set_rng_state
from benchmarks.data import Case
from benchmarks.interrupt import Interrupted, StopSignals
from benchmarks.plan import Cell, StudyPlan
from benchmarks.prefetch import PrefetchingSampler
from benchmarks.run_record import log_dataset_input, pip_freeze, say, training_curve_figure
from benchmarks.selection import Selector
from benchmarks.tracking import RunLog, flatten
from benchmarks.training import (StopRequested, TwoStreamSampler, prepare_precision, seed_everything,
                                 to_channels_last, train)
from benchmarks.weights import load_trained, log_weights
from methods.base import Method


class CellContext(Protocol):
    """What a stage reads from its launcher (:class:`benchmarks.runner.StudyRunner` is one)."""

    plan: StudyPlan
    client: MlflowClient
    checkpoints: CheckpointStore
    progress: bool
    on_progress: Callable[[str, str, int, int], None] | None

    def cases(self, ids: list[str]) -> list[Case]: ...


@dataclass
class Trained:
    """A cell's trained and selected method, with the training's wall time (s, all attempts)."""

    method: Method
    train_time_s: float
    selected_iteration: int


def make_sampler(cell: Cell, ctx: CellContext, method: Method) -> TwoStreamSampler | PrefetchingSampler:
    """The cell's batches: its labeled (and unlabeled) training cases, cropped by the profile."""
    plan, profile, cls = ctx.plan, cell.profile, type(method)
    labeled_ids = plan.splits["train"] if cls.label_pool == "all" else plan.splits[plan.labeled_split]
    unlabeled_ids = plan.splits[plan.unlabeled_split] if cls.batch_policy == "two_stream" else []
    labeled, unlabeled = ctx.cases(labeled_ids), ctx.cases(unlabeled_ids)
    per_epoch = (math.ceil(len(unlabeled) / profile.unlabeled_batch) if unlabeled else
                 math.ceil(len(labeled) / (profile.labeled_batch + profile.unlabeled_batch)))
    method.num_unlabeled_cases = len(unlabeled)
    method.observe_data([c.label for c in labeled], per_epoch)
    sampler = TwoStreamSampler(labeled, unlabeled, profile.labeled_batch, profile.unlabeled_batch, profile.patch,
                               cell.seed, cls.batch_policy, profile.device, cell.augmentation, profile.channels_last)
    return PrefetchingSampler(sampler, profile.prefetch_batches) if profile.prefetch_batches else sampler


def make_selector(cell: Cell, ctx: CellContext, method: Method, log: RunLog) -> Selector:
    """The cell's model-selection rule, validating on the eval split where the rule asks for it."""
    rule, profile = cell.selection, cell.profile
    eval_cases = ctx.cases(ctx.plan.splits["eval"]) if rule.best_on_eval else []
    val_stride = rule.validation_stride(profile.patch, profile.eval_stride)
    return Selector(rule, method, cell.iterations,
                    lambda: selection.validation_dice(method, eval_cases, ctx.plan.dataset.num_classes, rule,
                                                      profile.patch, val_stride),
                    lambda step, score: log.metrics({"val/dice_mean": score}, step=step))


def resume(cell: Cell, ctx: CellContext, log: RunLog, method: Method, sampler: TwoStreamSampler | PrefetchingSampler,
           selector: Selector) -> tuple[int, list[dict[str, float]], float]:
    """Load the cell's checkpoint, if any, into the method, sampler, selector and random generators, and
    log the curves so far; returns ``(next iteration, loss curve so far, training seconds so far)``."""
    saved = ctx.checkpoints.load(cell.run_key)
    if saved is None:
        return 0, [], 0.0
    method.load_state_dict(saved.method)
    sampler.load_state(saved.sampler)
    if saved.selection:
        selector.load_state(saved.selection)
        for step, score in selector.history:  # the validation curve so far, as for the training curve
            log.metrics({"val/dice_mean": score}, step=step)
    set_rng_state(saved.rng)
    for point in saved.curve:  # the curve so far, so the finished run holds all of it
        log.metrics({f"train/{k}": v for k, v in point.items() if k != "step"}, step=int(point["step"]))
    log.tags({"resumed_from_step": str(saved.next_step), "resumed_from_run": saved.run_id})
    say(f"[resume] {cell.name}: from iteration {saved.next_step} of {cell.iterations} "
        f"(checkpoint of run {saved.run_id or '?'})")
    return saved.next_step, list(saved.curve), saved.train_time_s


def train_cell(cell: Cell, ctx: CellContext, log: RunLog, signals: StopSignals) -> Trained:
    """Train ``cell`` to its budget (from its checkpoint, if any), select its model, log the weights."""
    profile = cell.profile
    log.params(flatten("", cell.resolved()))
    log.dict(cell.resolved(), "config/resolved.json")
    log.text(pip_freeze(), "env/pip_freeze.txt")
    log_dataset_input(log.client, log.run_id, cell, ctx.plan)
    seed_everything(cell.seed)
    method = cell.build_method()
    log.tags(method.run_tags())
    sampler = make_sampler(cell, ctx, method)
    if profile.channels_last:
        to_channels_last(method)
    prepare_precision(method, profile.precision)
    method.grad_clip_norm = profile.grad_clip_norm
    selector = make_selector(cell, ctx, method, log)
    start_step, curve, train_before = resume(cell, ctx, log, method, sampler, selector)
    train_start = time.time()

    def on_log(step: int, logs: dict[str, float]) -> None:
        log.metrics({f"train/{k}": v for k, v in logs.items()}, step=step)
        curve.append({"step": step, **logs})

    def on_checkpoint(next_step: int) -> None:
        ctx.checkpoints.save(TrainingState(cell.run_key, next_step, method.state_dict(), sampler.state(),
                                           rng_state(), list(curve), train_before + time.time() - train_start,
                                           log.run_id, selector.state()))

    def after_step(done: int) -> bool:
        if ctx.on_progress is not None:
            ctx.on_progress(cell.run_key, "train", done, cell.iterations)
        return selector(done)

    try:
        with signals.deferred():
            train(method, sampler, cell.iterations, profile.log_every, on_log=on_log, progress=ctx.progress,
                  description=cell.name, start_step=start_step, checkpoint_every=profile.checkpoint_every,
                  on_checkpoint=on_checkpoint, should_stop=signals.should_stop, precision=profile.precision,
                  after_step=after_step, warmup_fraction=profile.warmup_fraction,
                  hold_fraction=profile.hold_fraction)
    except StopRequested as stop:
        raise Interrupted(signals.signum or 15, f" at iteration {stop.next_step} (checkpoint saved)") from None
    finally:
        if isinstance(sampler, PrefetchingSampler):
            sampler.close()
    if profile.checkpoint_every and start_step < cell.iterations:
        on_checkpoint(cell.iterations)  # an interrupted evaluation then does not train again
    train_time = train_before + time.time() - train_start
    selected = selector.finish()
    log.tags({"selected_iteration": str(selected), "stopped_early": str(selector.stopped_early).lower(),
              "validations": str(len(selector.history)), "stage": "training+evaluation"})
    log.figure(training_curve_figure(curve, cell.name), "plots/training_curve.png")
    log_weights(log.client, log.run_id, method, cell, ctx.cases(ctx.plan.splits["train"][:1])[0].image.shape)
    return Trained(method, train_time, selected)


def reuse_training(cell: Cell, ctx: CellContext, log: RunLog, source: str) -> Trained:
    """An evaluation-only run: the logged weights of the finished training ``source``, referenced
    (``training_run_id``, the model as the run's input) with its selected iteration and training time."""
    from mlflow.entities import LoggedModelInput
    client = ctx.client
    model = load_trained(client, source, cell.profile.device)
    origin = client.get_run(source)
    log.params(flatten("", cell.resolved()))
    log.tags({"stage": "evaluation", "training_run_id": source, "weights": "in training run",
              **{k: origin.data.tags[k] for k in ("selected_iteration", "resumed_from_step", "model_id")
                 if k in origin.data.tags}})
    log_dataset_input(client, log.run_id, cell, ctx.plan)
    if "model_id" in origin.data.tags:
        client.log_inputs(log.run_id, models=[LoggedModelInput(origin.data.tags["model_id"])])
    return Trained(model.method, float(origin.data.metrics.get("cost/train_time_s", 0.0)),
                   int(origin.data.tags.get("selected_iteration", cell.iterations)))
