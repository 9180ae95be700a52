"""Resumable training state of one cell, written atomically under a folder keyed by its run key.

A checkpoint holds everything that decides how training continues: the method's networks,
optimisers and extra state, the sampler's generator and stream positions, the Python / NumPy /
torch random states, the training curve so far and the accumulated training time. Restoring it
into a freshly built method continues with exactly the numbers an uninterrupted run would have
produced (on the same device and thread count).

Layout: ``<checkpoint dir>/<sha256(run key)[:24]>/checkpoint.pt`` plus ``meta.json`` (run key,
step, time; readable without torch). The default folder is ``$ORGANBENCH_CHECKPOINT_DIR`` or
``<project>/checkpoints``; ``--checkpoint-dir`` overrides it (it must be reachable from every
worker that may resume the cell).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1


def default_checkpoint_dir() -> Path:
    from benchmarks.config import PROJECT_ROOT
    return Path(os.environ.get("ORGANBENCH_CHECKPOINT_DIR") or PROJECT_ROOT / "checkpoints")


def rng_state() -> dict[str, Any]:
    """Python, NumPy (global) and torch (CPU, and CUDA when present) random states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    """What a checkpoint restores: the next step to run and the state at that step boundary."""

    run_key: str
    next_step: int
    method: dict[str, Any]
    sampler: dict[str, Any]
    rng: dict[str, Any]
    curve: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    run_id: str = ""  # the MLflow run (attempt) that wrote it
    selection: dict[str, Any] = field(default_factory=dict)  # the model selector's history and best network


class CheckpointStore:
    """Atomic save / load / removal of one checkpoint per run key under ``root``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_checkpoint_dir()

    def check_writable(self) -> None:
        """A one-line :class:`~benchmarks.errors.ConfigError` now, before any run exists, when checkpoints
        cannot be written under ``root`` (a file in its place, no permission, a full disk): found only
        after the first checkpoint interval otherwise."""
        from benchmarks.errors import ConfigError
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe.", dir=self.root)
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"checkpoint folder {self.root} (--checkpoint-dir / ORGANBENCH_CHECKPOINT_DIR) is not "
                              f"writable: {exc.strerror or type(exc).__name__}") from None

    def folder(self, run_key: str) -> Path:
        return self.root / hashlib.sha256(run_key.encode()).hexdigest()[:24]

    def save(self, state: TrainingState) -> Path:
        """Write ``checkpoint.pt`` (temporary file, fsync, rename) and ``meta.json``; returns the path."""
        folder = self.folder(state.run_key)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, **vars(state)}
        path = folder / "checkpoint.pt"
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        meta = {"run_key": state.run_key, "next_step": state.next_step, "run_id": state.run_id,
                "saved_at": time.time()}
        fd, tmp = tempfile.mkstemp(prefix=".meta.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as handle:
            json.dump(meta, handle)
        os.replace(tmp, folder / "meta.json")
        return path

    def load(self, run_key: str) -> TrainingState | None:
        """The saved state of ``run_key``, or None when there is none (or it belongs to another key,
        or cannot be read: a damaged checkpoint is moved aside and training starts afresh)."""
        path = self.folder(run_key) / "checkpoint.pt"
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, weights_only=False)  # tensors back on the devices they were saved from
        except Exception:  # truncated or corrupt: keep it for inspection, do not resume from it
            path.rename(path.with_suffix(f".corrupt-{int(time.time())}"))
            return None
        if payload.get("format") != FORMAT or payload.get("run_key") != run_key:
            return None
        payload.pop("format")
        return TrainingState(**payload)

    def remove(self, run_key: str) -> None:
        shutil.rmtree(self.folder(run_key), ignore_errors=True)
