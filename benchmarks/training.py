"""Two-stream batching with random crops, the training loop (poly LR, progress) and seeding."""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.data import Case
from benchmarks.errors import OrganbenchError
from methods.base import Batch, Method
from methods.common.ramps import warmup_hold_poly_lr


def to_channels_last(method: Method) -> None:
    """Every network of ``method`` in ``torch.channels_last_3d`` (5-D weights; others unchanged). Call it
    before the first step and before loading a checkpoint: SGD creates its momentum buffers like the
    parameters, and ``load_state_dict`` copies saved values into the converted parameters."""
    for module in method.modules().values():
        module.to(memory_format=torch.channels_last_3d)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def random_crop(image: np.ndarray, label: np.ndarray | None, patch: Sequence[int],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``patch``-sized crop at a uniformly drawn start in ``[0, S - P]`` per axis.

    Axes shorter than the patch are first zero-padded, centred (as the TAK/GA loaders do).
    """
    pad = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(image.shape, patch)]
    if any(sum(p) for p in pad):
        image = np.pad(image, pad)
        label = None if label is None else np.pad(label, pad)
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, patch)]
    window = tuple(slice(st, st + p) for st, p in zip(starts, patch))
    return image[window], None if label is None else label[window]


AUGMENTATIONS: dict[str, tuple[int, ...]] = {"none": (), "flip_xy": (0, 1)}  # name -> flipped axes (x, y)


class _PermutationStream:
    """Endless concatenation of random permutations of ``range(n)``, drawn from ``rng`` when the
    previous one is used up (the TwoStreamBatchSampler of the references). Its position is plain
    data, so a checkpoint can store and restore it."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng = n, rng
        self.order: list[int] = []
        self.position = 0

    def __next__(self) -> int:
        if self.position >= len(self.order):
            self.order, self.position = self.rng.permutation(self.n).tolist(), 0
        self.position += 1
        return self.order[self.position - 1]

    def state(self) -> dict[str, Any]:
        return {"order": list(self.order), "position": self.position}

    def load_state(self, state: dict[str, Any]) -> None:
        self.order, self.position = list(state["order"]), int(state["position"])


class TwoStreamSampler:
    """Each batch: ``labeled_bs`` crops of labeled cases and ``unlabeled_bs`` crops of unlabeled cases.

    Both streams walk through random permutations (the TwoStreamBatchSampler of the references:
    every case is seen once per pass). ``policy`` (the method's ``batch_policy``): ``two_stream``
    as above; ``labeled_only`` drops the unlabeled crops; ``all_labeled`` fills every slot with a
    labeled crop. ``augmentation`` (a named protocol, recorded on the run): ``none`` (TAK, GA:
    random crops only) or ``flip_xy`` (the DHC family: every crop, labeled or unlabeled, flipped
    along each in-plane axis, x and y, with probability 0.5). All draws come from the sampler's
    generator: :meth:`state` / :meth:`load_state` capture it and both stream positions (training
    resumes with the very batches it would have drawn).
    """

    def __init__(self, labeled: Sequence[Case], unlabeled: Sequence[Case], labeled_bs: int, unlabeled_bs: int,
                 patch: Sequence[int], seed: int, policy: str = "two_stream", device: str = "cpu",
                 augmentation: str = "none", channels_last: bool = False) -> None:
        if not labeled:
            raise ValueError("no labeled cases to train on")
        if policy not in ("two_stream", "labeled_only", "all_labeled"):
            raise ValueError(f"unknown batch policy {policy!r}")
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; known: {sorted(AUGMENTATIONS)}")
        self.augmentation = augmentation
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        if policy == "two_stream" and unlabeled_bs and not unlabeled:
            raise ValueError("the method needs unlabeled cases but the split has none")
        self.labeled, self.unlabeled = list(labeled), list(unlabeled)
        self.patch, self.device = tuple(patch), device
        self.labeled_bs = labeled_bs + unlabeled_bs if policy == "all_labeled" else labeled_bs
        self.unlabeled_bs = unlabeled_bs if policy == "two_stream" else 0
        self.rng = np.random.default_rng(seed)
        self._labeled_ids = _PermutationStream(len(self.labeled), self.rng)
        self._unlabeled_ids = _PermutationStream(max(len(self.unlabeled), 1), self.rng)

    def state(self) -> dict[str, Any]:
        """The generator's state and both stream positions (plain data)."""
        return {"rng": self.rng.bit_generator.state, "labeled": self._labeled_ids.state(),
                "unlabeled": self._unlabeled_ids.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where the sampler that produced ``state`` stopped."""
        self.rng.bit_generator.state = state["rng"]
        self._labeled_ids.load_state(state["labeled"])
        self._unlabeled_ids.load_state(state["unlabeled"])

    def _crops(self, cases: list[Case], ids: _PermutationStream, n: int, with_labels: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(n):
            case = cases[next(ids)]
            image, label = random_crop(case.image, case.label if with_labels else None, self.patch, self.rng)
            for axis in AUGMENTATIONS[self.augmentation]:
                if self.rng.random() < 0.5:
                    image = np.flip(image, axis)
                    label = None if label is None else np.flip(label, axis)
            images.append(np.ascontiguousarray(image))
            if with_labels:
                labels.append(np.ascontiguousarray(label))
        x = torch.from_numpy(np.stack(images)[:, None]) if images else torch.zeros((0, 1, *self.patch))
        y = torch.from_numpy(np.stack(labels).astype(np.int64)) if labels else torch.zeros((0, *self.patch), dtype=torch.long)
        if torch.device(self.device).type == "cuda":  # pinned pages: the copy overlaps the running step
            x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        else:
            x, y = x.to(self.device), y.to(self.device)
        return x.contiguous(memory_format=self.memory_format), y

    def next(self) -> Batch:
        image_l, label_l = self._crops(self.labeled, self._labeled_ids, self.labeled_bs, True)
        image_u, _ = self._crops(self.unlabeled, self._unlabeled_ids, self.unlabeled_bs, False)
        return Batch(image_l, label_l, image_u)


class TrainingDiverged(OrganbenchError):
    """A loss became NaN or infinite at iteration ``step`` (a result of the configuration: the same
    run key on the same machine kind diverges again)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


PRECISIONS = ("fp32", "fp16", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPU flags of native bfloat16 arithmetic


def cpuinfo_values(key: str) -> list[str]:
    """The values of ``key`` in ``/proc/cpuinfo``, one per logical CPU (empty where there is none, e.g. not
    on Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return [value.strip() for name, _, value in (line.partition(":") for line in info.splitlines())
            if name.strip() == key]


def cpu_flags() -> set[str]:
    """The ``flags`` of ``/proc/cpuinfo`` (those of its first CPU; empty where there is none)."""
    return set(next(iter(cpuinfo_values("flags")), "").split())


def compute_environment(device: str) -> dict[str, str]:
    """What a run was computed on, as MLflow tags: ``torch_version``, ``torch_threads`` (intra-op
    threads of this process), ``cpu_capability`` (the CPU kernels torch dispatches to: ``AVX2``,
    ``AVX512``, ...), ``cpu_model`` and ``accelerator`` (the GPU's name, or ``none``).

    Not part of the run key, as the machine is not: the same run on another CPU kind, or with
    another number of threads, follows another floating-point trajectory (measured on an AVX2 CPU:
    the sum of the labeled-only V-Net's weights after 6 steps at the ``cpu`` profile is 2690.24 with 1
    thread and 2691.21 with 2), so a table says which machines its runs come from instead.

    >>> sorted(compute_environment("cpu"))
    ['accelerator', 'cpu_capability', 'cpu_model', 'torch_threads', 'torch_version']
    """
    target = torch.device(device)
    accelerator = torch.cuda.get_device_name(target) if target.type == "cuda" else "none"
    return {"torch_version": torch.__version__, "torch_threads": str(torch.get_num_threads()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": next(iter(cpuinfo_values("model name")), "unknown"), "accelerator": accelerator}


def resolve_precision(precision: str, device: str) -> str:
    """A profile's ``precision`` as trained: ``auto`` is ``bf16`` on a CPU with native bfloat16
    (AVX-512 BF16 or AMX: about 1.2-1.3x faster whole runs at the ``cpu`` profile, loss curves as fp32's)
    and ``fp32`` elsewhere (emulated bf16 ran about 35x slower than fp32 on an AVX2 CPU). Others unchanged.

    >>> resolve_precision("fp16", "cuda")
    'fp16'
    """
    if precision != "auto":
        return precision
    native = torch.device(device).type == "cpu" and bool(cpu_flags() & set(NATIVE_BF16_FLAGS))
    return "bf16" if native else "fp32"


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision: none for ``fp32``, float16 (CUDA only) or bfloat16."""
    kind = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and kind != "cuda":
        raise OrganbenchError("precision fp16 needs CUDA (autocast + GradScaler, as the TAK and DHC references); "
                              "use bf16 on the CPU")
    if precision not in PRECISIONS:
        raise OrganbenchError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return torch.autocast(kind, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def prepare_precision(method: Method, precision: str) -> None:
    """Give ``method`` a gradient scaler under fp16 (the references' torch.cuda.amp recipe)."""
    if precision == "fp16":
        method.grad_scaler = torch.amp.GradScaler(method.device.type)


class StopRequested(Exception):
    """Raised by :func:`train` at a step boundary when ``should_stop()`` said so (after the
    checkpoint callback saved the state at that boundary)."""

    def __init__(self, next_step: int) -> None:
        super().__init__(f"stopped before iteration {next_step}")
        self.next_step = next_step


def train(method: Method, sampler: TwoStreamSampler, iterations: int, log_every: int = 25,
          on_log: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True,
          description: str = "train", start_step: int = 0, checkpoint_every: int = 0,
          on_checkpoint: Callable[[int], None] | None = None,
          should_stop: Callable[[], bool] | None = None, precision: str = "fp32",
          after_step: Callable[[int], bool] | None = None, warmup_fraction: float = 0.0,
          hold_fraction: float = 0.0) -> dict[str, float]:
    """Run steps ``start_step .. iterations - 1`` with poly LR decay over the budget; returns the last logs.

    ``warmup_fraction`` (a profile setting): the first ``round(fraction * iterations)`` steps ramp the
    rate up linearly to the method's base rate before the poly decay takes over
    (:func:`methods.common.ramps.warmup_poly_lr`); 0 is the references' schedule. ``hold_fraction``
    (a profile setting): the rate stays at the base rate until ``round(fraction * iterations)``, then
    decays to zero over the rest of the budget (:func:`methods.common.ramps.warmup_hold_poly_lr`); 0
    decays from the first step (after the warm-up), as the references.

    ``on_log(step, logs)`` receives the logs (plus ``lr``) every ``log_every`` steps and at the end.
    ``on_checkpoint(next_step)`` is called after every ``checkpoint_every``-th step (not after the
    last) with the number of steps done, and, when ``should_stop()`` turns true, once more before
    :class:`StopRequested` is raised: the saved state is always that of a step boundary.
    ``precision``: each step runs under :func:`autocast`. ``after_step(done)`` runs after every step
    (model selection validates there) and returns True to end training early (early stopping).
    """
    logs: dict[str, float] = {}
    bar = tqdm(range(start_step, iterations), desc=description, disable=not progress, leave=False,
               dynamic_ncols=True, initial=start_step, total=iterations, position=1, unit="it")
    warmup_steps, hold_steps = round(warmup_fraction * iterations), round(hold_fraction * iterations)
    for step in bar:
        lr = warmup_hold_poly_lr(method.config.lr, step, getattr(method.config, "poly_horizon", None) or iterations,
                                 method.config.poly_power, warmup_steps, hold_steps)
        for opt in method.optimizers:
            for group in opt.param_groups:  # lr_scale: a method's second rate (e.g. critics), decayed alike
                group["lr"] = lr * group.get("lr_scale", 1.0)
        with autocast(method.device, precision):
            logs = {**method.train_step(sampler.next(), step), "lr": lr}
        if not all(math.isfinite(v) for v in logs.values()):
            raise TrainingDiverged(f"{method.name}: non-finite loss at step {step}: {logs}", step)
        if step % 5 == 0:
            bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}")
        if on_log and (step % log_every == 0 or step == iterations - 1):
            on_log(step, logs)
        done = step + 1
        if after_step is not None and after_step(done) and done < iterations:
            bar.close()
            return logs
        if done < iterations and should_stop is not None and should_stop():
            if on_checkpoint:
                on_checkpoint(done)
            bar.close()
            raise StopRequested(done)
        if on_checkpoint and checkpoint_every and done % checkpoint_every == 0 and done < iterations:
            on_checkpoint(done)
    return logs
