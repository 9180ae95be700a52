"""A study resolved under a profile: its cells, their configurations and run keys.

Resolution checks everything a run depends on before any run exists: methods and seeds, the
method configurations (keys and value types), the dataset definition, the split files (present,
consistent, non-empty) and the data digest. A :class:`Cell`'s ``run_key`` hashes everything that
determines its result and nothing else (see :meth:`Cell.resolved`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks import HARNESS_VERSION
from benchmarks.config import Profile, Study, check_seeds, config_hash
from benchmarks.data import DatasetInfo, check_splits, read_split, split_name
from benchmarks.data.digest import dataset_digest
from benchmarks.data.sources import resolve_dataset
from benchmarks.errors import ConfigError, DatasetError, OrganbenchError
from benchmarks.metrics import Protocol, get_protocol
from benchmarks.selection import RULES, SelectionRule, selection_rule
from methods import UnknownMethodError, get_method
from methods.base import Method, MethodConfig
from methods.common.kernels import run_key_versions

# Profile fields that do not change a run's numbers (kept out of the run key).
# lr_scale is in the key through the scaled ``method_config.lr`` it produces. cells_at_once sets each
# worker's intra-op threads, which change the floating-point trajectory as the CPU kind does; like the
# CPU kind they are recorded on the run (tag ``torch_threads``), not keyed.
NOT_IN_KEY = ("description", "log_every", "checkpoint_every", "cpus_per_cell", "gpus_per_cell", "lr_scale",
              "prefetch_batches", "save_predictions", "cells_at_once")


# Profile fields added after stores existed: left out of the keys while at these values (the
# references' behaviour), so the runs recorded before them keep their keys.
OMITTED_AT_DEFAULT = {"grad_clip_norm": 0.0, "hold_fraction": 0.0}

# Profile fields that only the evaluation stage reads (in the run key, not in the training key).
EVALUATION_ONLY = ("eval_stride", "max_test_cases")


def build_method(name: str, config: dict[str, Any], num_classes: int, class_names: Sequence[str] | None,
                 iterations: int, device: str = "cpu", patch: Sequence[int] | None = None) -> Method:
    """Method ``name`` with the resolved configuration ``config`` (plain values, as logged) for a
    dataset of ``num_classes`` classes, a budget of ``iterations`` and training ``patch`` (x, y, z)."""
    cls = get_method(name)
    return cls(cls.resolve_config(config, f"{name} configuration"), num_classes, iterations, device=device,
               patch=patch, class_names=class_names)


def resolve_method_config(cls: type[Method], profile: Profile, study: Study | None = None, name: str = "",
                          extra: dict[str, Any] | None = None) -> MethodConfig:
    """``cls``'s configuration as a run under ``profile`` trains it: the profile's overrides of fields
    the method has, then ``study``'s ``method_overrides`` and ``variants`` overrides of method ``name``,
    then ``extra``; checked (a wrong key or type raises a ConfigError naming its source), and the
    learning rate multiplied by the profile's ``lr_scale`` last (a study's rate is scaled too)."""
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    overrides = {k: v for k, v in profile.method_overrides.items() if k in fields}
    source = f"{profile.name} profile: method_overrides"
    if study is not None:
        overrides.update(study.method_overrides.get(name, {}))
        overrides.update(study.variants.get(name, {}).get("overrides", {}))
        source = (f"{study.path}: variants.{name}.overrides" if name in study.variants
                  else f"{study.path}: method_overrides.{name}")
    overrides.update(extra or {})
    config = cls.resolve_config(overrides, source)
    return dataclasses.replace(config, lr=config.lr * profile.lr_scale)


@dataclass(frozen=True)
class Cell:
    """One (method, seed) run of a study under a profile, with its resolved configuration."""

    study: Study
    profile: Profile
    method: str
    seed: int
    iterations: int
    method_config: dict[str, Any]
    dataset: DatasetInfo
    split_sha: str
    data_digest: str
    versions: dict[str, str]
    selection: SelectionRule = RULES["last"]
    augmentation: str = "none"

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the result (logged as params, hashed into the run key): the
        study's setting, the profile, the method's configuration, the data (digest of dataset.json
        and of the case files used) and the behaviour versions of the method, the harness, the
        metric protocol and the synthetic data generator."""
        profile = {k: v for k, v in dataclasses.asdict(self.profile).items()
                   if k not in NOT_IN_KEY and not (k in OMITTED_AT_DEFAULT and v == OMITTED_AT_DEFAULT[k])}
        # only the profile overrides this method has (others cannot change its result or its key)
        profile["method_overrides"] = {k: v for k, v in profile["method_overrides"].items() if k in self.method_config}
        return {"study": self.study.experiment_name, "method": self.method, "seed": self.seed,
                "dataset": self.dataset.name, "synthetic": self.dataset.synthetic, "split_sha256": self.split_sha,
                "data_digest": self.data_digest, "preprocessing": self.dataset.preprocessing,
                "labeled_ratio": self.study.labeled_ratio, "protocol": self.study.protocol,
                "iterations": self.iterations, "profile": profile, "method_config": self.method_config,
                "model_selection": dataclasses.asdict(self.selection), "augmentation": self.augmentation,
                "versions": self.versions}

    def training_resolved(self) -> dict[str, Any]:
        """What determines the selected weights and nothing else (hashed into :attr:`training_key`):
        :meth:`resolved` without the study's name, the entry's name (a variant is its base method and
        configuration), the metric protocol and the evaluation-only profile fields."""
        resolved = self.resolved()
        for key in ("study", "protocol"):
            resolved.pop(key)
        resolved["method"] = self.study.base_method(self.method)
        resolved["profile"] = {k: v for k, v in resolved["profile"].items() if k not in EVALUATION_ONLY}
        resolved["versions"] = {k: v for k, v in self.versions.items() if k != "protocol"}
        return resolved

    @property
    def training_key(self) -> str:
        """The training stage's key: equal for every study cell that trains the same network (Table 2's
        TAK and an ablation's default TAK), so a finished training anywhere in the store is reused."""
        return (f"{self.study.base_method(self.method)}/{self.dataset.name}/{self.study.labeled_ratio}/seed{self.seed}/"
                f"{self.profile.name}/{config_hash(self.training_resolved())}")

    def build_method(self) -> Method:
        """The cell's method, untrained, as every caller builds it (the single factory)."""
        return build_method(self.study.base_method(self.method), self.method_config, self.dataset.num_classes,
                            self.dataset.class_names, self.iterations, self.profile.device, self.profile.patch)

    @property
    def run_key(self) -> str:
        return (f"{self.study.experiment_name}/{self.method}/{self.dataset.name}/{self.study.labeled_ratio}/"
                f"seed{self.seed}/{self.profile.name}/{config_hash(self.resolved())}")

    @property
    def name(self) -> str:
        scaled = f" at {self.iterations} iterations" if self.study.budget_scales else ""
        return f"{self.method} seed {self.seed}{scaled}"


def absent_inputs(study: Study) -> dict[str, str]:
    """Entries of ``study`` whose inputs are absent (e.g. text-encoder weights), with the first line of
    the reason, found with each method's ``check_available`` on the entry's own overrides."""
    absent = {}
    for name in study.methods:
        spec = study.variants.get(name, {"method": name})
        cls = get_method(spec["method"])
        try:
            cls.check_available(cls.resolve_config(spec.get("overrides", {})))
        except OrganbenchError as exc:
            absent[name] = str(exc).splitlines()[0]
    return absent


def _pick(values: dict[str, Any], profile: str, key: str, study: Study) -> Any:
    if profile not in values:
        raise ConfigError(f"{study.path}: {key} has no entry for profile {profile!r} (entries: {sorted(values)})")
    return values[profile]


def _split_sha(info: DatasetInfo, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update((info.root / "splits" / f"{name}.txt").read_bytes())
    return digest.hexdigest()[:16]


def unique(values: list[Any]) -> list[Any]:
    """``values`` without repeats, first occurrence kept (``--seeds 3,3`` trains seed 3 once)."""
    return list(dict.fromkeys(values))


class StudyPlan:
    """Resolve ``study`` under ``profile`` for the requested methods and seeds (default: the study's)."""

    def __init__(self, study: Study, profile: Profile, methods: list[str] | None = None,
                 seeds: list[int] | None = None, data_dir: str | Path | None = None, progress: bool = True) -> None:
        self.study, self.profile = study, profile
        self.study_seeds = list(_pick(study.seeds, profile.name, "seeds", study))
        self.methods = unique(methods) if methods else list(study.methods)
        self.seeds = check_seeds(unique(seeds), "--seeds") if seeds is not None else self.study_seeds
        self.iterations = int(_pick(study.budget, profile.name, "budget", study))
        try:
            self.protocol: Protocol = get_protocol(study.protocol)
        except KeyError as exc:
            raise ConfigError(f"{study.path}: protocol: {exc.args[0]}") from None
        unknown = sorted(set(study.method_overrides) - set(self.methods) - set(study.methods))
        if unknown:
            raise ConfigError(f"{study.path}: method_overrides names methods not in the study: {unknown}")
        names = unique(self.methods + list(study.methods))
        self.method_classes: dict[str, type[Method]] = {}
        for name in names:
            try:
                self.method_classes[name] = get_method(study.base_method(name))
            except UnknownMethodError as exc:
                where = f"{study.path}: methods" if name in study.methods else "--methods"
                raise ConfigError(f"{where}: {exc}") from None
        self.configs = {n: self._method_config(n) for n in names}
        self.dataset = resolve_dataset(study.dataset, profile, data_dir, progress)
        ratio = study.labeled_ratio
        self.split_names = [split_name(ratio, "labeled", study.split_variant),
                            split_name(ratio, "unlabeled", study.split_variant), "train", "test"]
        if any(self.selection(m).best_on_eval for m in names):  # validation reads the eval split
            self.split_names.append("eval")
        self.splits = {name: read_split(self.dataset, name) for name in self.split_names}
        self._check_not_empty()
        check_splits(self.dataset, self.splits, self.split_names[0], self.split_names[1])
        leak = sorted(set(self.splits.get("eval", [])) & set(self.splits["test"]))
        if leak:
            raise DatasetError(f"{self.dataset.root / 'splits'}/eval.txt shares {len(leak)} id(s) with test.txt, e.g. "
                               f"{leak[:3]}: model selection must never see a test case")
        self.split_sha = _split_sha(self.dataset, self.split_names)
        self.data_digest = dataset_digest(self.dataset, [i for name in ("train", "test", "eval")
                                                         for i in self.splits.get(name, [])])

    @property
    def labeled_split(self) -> str:
        return self.split_names[0]

    @property
    def unlabeled_split(self) -> str:
        return self.split_names[1]

    def _method_config(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(resolve_method_config(self.method_classes[name], self.profile, self.study, name))

    def selection(self, method: str) -> SelectionRule:
        """The model-selection rule of ``method``: the study's for this profile, else the profile's;
        ``reference`` resolves to the method's reference rule."""
        name = self.study.model_selection.get(self.profile.name, self.profile.model_selection)
        if name == "reference":
            name = self.method_classes[method].reference_selection
        return selection_rule(name, self.study.dataset)

    def augmentation(self, method: str) -> str:
        """The augmentation of ``method`` (as :meth:`selection`)."""
        name = self.study.augmentation.get(self.profile.name, self.profile.augmentation)
        return self.method_classes[method].reference_augmentation if name == "reference" else name

    def _check_not_empty(self) -> None:
        needed = ["train", "test", self.labeled_split] + (["eval"] if "eval" in self.splits else [])
        if any(self.method_classes[m].batch_policy == "two_stream" for m in self.methods):
            needed.append(self.unlabeled_split)
        for name in needed:
            if not self.splits[name]:
                raise DatasetError(f"{self.dataset.root / 'splits' / (name + '.txt')}: split {name!r} is empty; "
                                   "a study needs labeled, unlabeled (semi-supervised methods), train and test cases")

    def versions(self, method: str) -> dict[str, str]:
        """Behaviour versions that enter ``method``'s run keys."""
        cls = self.method_classes[method]
        versions = {"method": cls.version, "harness": HARNESS_VERSION,
                    "protocol": self.protocol.version, "data_generator": self.dataset.generator_version}
        if self.profile.device != "cpu" and cls.accelerator_version != "1":
            versions["method_accelerator"] = cls.accelerator_version
        return versions | run_key_versions(self.profile.device)

    def budgets(self) -> list[int]:
        """Training iterations of the study's cells: the budget, or the budget times each of
        ``budget_scales`` (rounded, at least 1)."""
        if not self.study.budget_scales:
            return [self.iterations]
        return [max(1, round(self.iterations * scale)) for scale in self.study.budget_scales]

    def cell(self, method: str, seed: int, iterations: int | None = None) -> Cell:
        return Cell(self.study, self.profile, method, seed, iterations or self.iterations, self.configs[method],
                    self.dataset, self.split_sha, self.data_digest, self.versions(method), self.selection(method),
                    self.augmentation(method))

    def cells(self) -> list[Cell]:
        """The requested cells (methods x seeds asked for on the command line, else the study's) at
        every budget of the study."""
        return [self.cell(m, s, b) for b in self.budgets() for m in self.methods for s in self.seeds]

    def study_cells(self) -> list[Cell]:
        """The study's own cells under this profile: its methods x its seeds (x its budgets). Tables
        show exactly these."""
        return [self.cell(m, s, b) for b in self.budgets() for m in self.study.methods for s in self.study_seeds]

    def costliest_first(self, cells: Sequence[Cell]) -> list[Cell]:
        """``cells`` by estimated training cost, costliest first: iterations x the method's
        ``relative_step_cost`` (a measured hint, :class:`methods.base.Method`); ties keep the given
        order. Launchers that train several cells at once hand them out in this order."""
        return sorted(cells, key=lambda c: -c.iterations * self.method_classes[c.method].relative_step_cost)

    def test_ids(self) -> list[str]:
        """The test cases evaluated: all, or the first ``max_test_cases`` under the profile."""
        return self.splits["test"][: self.profile.max_test_cases or None]
