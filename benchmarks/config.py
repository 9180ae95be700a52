"""Profiles and study files: strict YAML -> typed dataclasses (an unknown key is an error naming it)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.errors import ConfigError
from methods.common.config_types import check_value, field_types, short_repr
from methods.common.strict_yaml import load_yaml

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
STUDIES_DIR = PACKAGE_DIR / "studies"
PROFILES_FILE = PACKAGE_DIR / "profiles.yaml"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # study and experiment names (folder names)


@dataclass(frozen=True)
class Profile:
    """How a study is scaled: data, patch, batch composition, evaluation grid. Same for every method."""

    name: str
    description: str
    data: str  # synthetic | real
    cohort_shape: tuple[int, int, int] | None
    patch: tuple[int, int, int]
    eval_stride: tuple[int, int, int]
    labeled_batch: int
    unlabeled_batch: int
    method_overrides: dict[str, Any]
    max_test_cases: int | None
    log_every: int
    device: str
    checkpoint_every: int = 0  # iterations between training checkpoints (0: none); not part of the run key
    precision: str = "fp32"  # fp32 | fp16 (CUDA: autocast + GradScaler) | bf16 (autocast) | auto (in the
    # file only: bf16 on a CPU with native bfloat16, else fp32; resolved when loaded, so the run key has it)
    model_selection: str = "last"  # a rule of benchmarks.selection, or "reference"; a study may override
    augmentation: str = "none"  # none | flip_xy | reference; a study may override
    lr_scale: float = 1.0  # multiplies every method's base learning rate (its ``lr``, after the study's
    # overrides); the scaled rate is the run's ``method_config.lr``, so the key holds it there
    warmup_fraction: float = 0.0  # share of the budget over which every method's rate ramps up linearly
    # before its poly decay (benchmarks.training.train); 0: the references' schedule. In the run key.
    hold_fraction: float = 0.0  # share of the budget before which every method's rate stays at its base
    # rate (after the warm-up); the poly decay to zero takes the rest (benchmarks.training.train). 0: the
    # references' decay from the first step. In the run key when not 0.
    grad_clip_norm: float = 0.0  # every backward step's gradient scaled to at most this L2 norm, for every
    # method (Method.backward_step); 0: off (the references). In the run key when not 0.
    channels_last: bool = False  # networks and image batches in torch.channels_last_3d (faster cuDNN
    # kernels on a GPU; the same outputs to float rounding, tests/test_channels_last.py); in the run key
    prefetch_batches: int = 0  # batches prepared ahead on a background thread (benchmarks/prefetch.py;
    # bit-identical batches, so not part of the run key); 0: drawn on the training thread
    save_predictions: bool = False  # keep each evaluation's test label maps (predictions/*.nii.gz in the
    # run; what `make fig4` draws); not part of any key
    cpus_per_cell: float = 1.0  # resources of one cell as a Ray task (--launcher ray)
    cells_at_once: int = 1  # the local launcher's worker processes, each training one cell at a time with
    # (cores / cells_at_once) intra-op threads (benchmarks/local_pool.py); not part of the run key
    gpus_per_cell: float = 0.0


@dataclass(frozen=True)
class Study:
    """One paper table or ablation (``benchmarks/studies/<name>.yaml``)."""

    study: str
    title: str
    dataset: str
    labeled_ratio: float
    protocol: str
    methods: list[str]
    seeds: dict[str, list[int]]
    budget: dict[str, int]
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    split_variant: str = ""  # e.g. "corrected": labeled_20p_corrected / unlabeled_20p_corrected
    kind: str = "train"  # "train": train + evaluate; "cost": count params/FLOPs only (no data, no training)
    # Ablations: named variants of a registered method, listed in ``methods`` like methods, e.g.
    # {tak-lc0.5: {method: tak, overrides: {contrast_weight: 0.5}, value: {lambda_c: 0.5}}}.
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The published panel of an ablation: {file: table7_lambda_c.csv, key: [lambda_c]} (reports/published/).
    published: dict[str, Any] = field(default_factory=dict)
    # Variants whose inputs are absent (e.g. text-encoder weights) are listed and skipped, not fatal.
    skip_unavailable: bool = False
    # Each cell is trained at budget x scale for every scale (the budget-check study: [0.5, 1, 2]).
    budget_scales: list[float] = field(default_factory=list)
    # Per profile: the model selection / augmentation of every method (default: the profile's), e.g.
    # {paper: best_on_eval}; "reference" gives each method its reference code's.
    model_selection: dict[str, str] = field(default_factory=dict)
    augmentation: dict[str, str] = field(default_factory=dict)
    # The MLflow experiment (and the study name in run keys) of its cells; default: the study's own
    # name. budget-check uses table2's: its cells at the default budget are table2's own cells.
    experiment: str = ""
    path: Path = Path()

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.study

    def base_method(self, entry: str) -> str:
        """The registered method behind a ``methods`` entry (itself unless it is a variant)."""
        return self.variants[entry]["method"] if entry in self.variants else entry


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({type(exc).__name__})") from None
    return load_yaml(text, str(path))


def _build(cls: type, raw: Any, source: str, extra: dict[str, Any]) -> Any:
    """``cls(**raw, **extra)`` after checking keys (unknown / missing) and every value's type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(raw).__name__}")
    types_ = {k: v for k, v in field_types(cls).items() if k not in extra}
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(types_)}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} - set(extra)
    missing = sorted(required - set(raw))
    if missing:
        raise ConfigError(f"{source}: missing key(s) {missing}")
    values = {k: check_value(v, types_[k], f"{source}: {k}") for k, v in raw.items()}
    return cls(**values, **extra)


def load_profile(name: str) -> Profile:
    """The profile ``name`` from ``benchmarks/profiles.yaml``."""
    profiles = _read_yaml(PROFILES_FILE)
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; known: {sorted(profiles)}")
    profile = _build(Profile, profiles[name], f"{PROFILES_FILE}:{name}", {"name": name})
    for axis in profile.patch:
        if axis % 16:
            raise ConfigError(f"{PROFILES_FILE}:{name}: patch {profile.patch} must be divisible by 16 (V-Net)")
    if not profile.lr_scale > 0:
        raise ConfigError(f"{PROFILES_FILE}:{name}: lr_scale {profile.lr_scale!r} must be positive")
    if not (isinstance(profile.cells_at_once, int) and 1 <= profile.cells_at_once <= 64):
        raise ConfigError(f"{PROFILES_FILE}:{name}: cells_at_once {profile.cells_at_once!r} must be an integer in [1, 64]")
    if not 0 <= profile.prefetch_batches <= 8:
        raise ConfigError(f"{PROFILES_FILE}:{name}: prefetch_batches {profile.prefetch_batches!r} must be in [0, 8]")
    if not (math.isfinite(profile.grad_clip_norm) and profile.grad_clip_norm >= 0):
        raise ConfigError(f"{PROFILES_FILE}:{name}: grad_clip_norm {profile.grad_clip_norm!r} must be a finite "
                          "number >= 0 (0: no cap)")
    if not (0 <= profile.hold_fraction < 1 and (profile.hold_fraction == 0
                                                 or profile.hold_fraction >= profile.warmup_fraction)):
        raise ConfigError(f"{PROFILES_FILE}:{name}: hold_fraction {profile.hold_fraction!r} must be 0 or in "
                          f"[warmup_fraction, 1)")
    if not 0 <= profile.warmup_fraction < 1:
        raise ConfigError(f"{PROFILES_FILE}:{name}: warmup_fraction {profile.warmup_fraction!r} must be in [0, 1)")
    from benchmarks.selection import RULES
    from benchmarks.training import AUGMENTATIONS, PRECISIONS, resolve_precision
    for key, known in (("precision", (*PRECISIONS, "auto")), ("model_selection", (*RULES, "reference")),
                       ("augmentation", (*AUGMENTATIONS, "reference"))):
        if getattr(profile, key) not in known:
            raise ConfigError(f"{PROFILES_FILE}:{name}: {key} {getattr(profile, key)!r} is not one of {sorted(known)}")
    return dataclasses.replace(profile, precision=resolve_precision(profile.precision, profile.device))


def study_path(name_or_path: str) -> Path:
    """``table2`` -> ``benchmarks/studies/table2.yaml``; a path is returned as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = STUDIES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown study {name_or_path!r}; known: {known}")
    return path


def load_study(name_or_path: str) -> Study:
    """Read and check a study file."""
    path = study_path(name_or_path)
    study = _build(Study, _read_yaml(path), str(path), {"path": path})
    if not 0 < float(study.labeled_ratio) <= 1:
        raise ConfigError(f"{path}: labeled_ratio must be in (0, 1], got {study.labeled_ratio}")
    for key in ("study", "experiment"):
        value = getattr(study, key)
        if (value or key == "study") and not SAFE_NAME.fullmatch(value):
            raise ConfigError(f"{path}: {key} {short_repr(value)}: letters, digits, '_', '-' and '.' only, "
                              "starting with a letter or digit (it names output folders and experiments)")
    if study.kind not in ("train", "cost"):
        raise ConfigError(f"{path}: kind must be 'train' or 'cost', got {study.kind!r}")
    for profile, budget in study.budget.items():
        if study.kind == "train" and budget < 1:
            raise ConfigError(f"{path}: budget.{profile}: the budget is a number of training iterations >= 1, "
                              f"got {budget}")
    for profile, seeds in study.seeds.items():
        check_seeds(seeds, f"{path}: seeds.{profile}")
    from benchmarks.selection import RULES
    from benchmarks.training import AUGMENTATIONS
    for key, known in (("model_selection", RULES), ("augmentation", AUGMENTATIONS)):
        for profile, name in getattr(study, key).items():
            if name != "reference" and name not in known:
                raise ConfigError(f"{path}: {key}.{profile}: unknown {key.replace('_', ' ')} {name!r}; known: "
                                  f"{sorted(known)} or 'reference'")
    if any(scale <= 0 for scale in study.budget_scales):
        raise ConfigError(f"{path}: budget_scales must be positive, got {study.budget_scales}")
    if not study.methods:
        raise ConfigError(f"{path}: methods: the study names no method")
    duplicated = sorted({m for m in study.methods if study.methods.count(m) > 1})
    if duplicated:
        raise ConfigError(f"{path}: methods: {duplicated} listed more than once")
    for name, spec in study.variants.items():
        if not isinstance(spec, dict) or "method" not in spec:
            raise ConfigError(f"{path}: variants.{name} must be a mapping with a 'method' key")
        unknown = sorted(set(spec) - {"method", "overrides", "value"})
        if unknown:
            raise ConfigError(f"{path}: variants.{name}: unknown key(s) {unknown}; allowed: method, overrides, value")
    return study


def check_seeds(seeds: list[int], where: str) -> list[int]:
    """``seeds`` if they are distinct non-negative integers (at least one), else a ConfigError naming ``where``."""
    if not seeds:
        raise ConfigError(f"{where}: no seed given")
    outside = [s for s in seeds if not 0 <= s < 2**32]
    if outside:
        raise ConfigError(f"{where}: seeds must be integers in [0, 2^32) (numpy seeds modulo 2^32), got "
                          f"{short_repr(outside)}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{where}: seed(s) {repeated} listed more than once")
    return seeds


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a resolved configuration (part of the run key)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def env_seconds(name: str, default: float, low: float = 0.0, high: float = 86_400.0, low_inclusive: bool = True) -> float:
    """``$name`` as a number of seconds in ``[low, high)`` (``(low, high)`` without ``low_inclusive``),
    ``default`` when unset or empty; anything else is a one-line ConfigError naming the variable.

    >>> env_seconds("ORGANBENCH_NOT_SET_ANYWHERE", 5.0)
    5.0
    """
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not ((value >= low if low_inclusive else value > low) and value < high):
        interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g})"
        raise ConfigError(f"{name}={raw[:40]!r}: expected seconds in {interval}")
    return value


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store ``mlruns/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    (PROJECT_ROOT / "mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
