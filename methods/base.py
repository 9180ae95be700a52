"""The method contract: a typed config, networks, ``train_step`` and ``predict``.

A method is one small registered class (see ``methods/mean_teacher.py``). The harness owns data,
budget, learning-rate schedule, evaluation and tracking; the method owns its networks, optimisers
and losses.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

import torch
from torch import nn

from methods.common.config_types import check_fields
from methods.common.vnet import Norm, VNet

Group = Literal["lower-bound", "general", "imbalance", "fully"]


@dataclass
class Batch:
    """One training iteration's input.

    Attributes:
        image_l: labeled images ``(B_l, 1, D, H, W)``, float in [0, 1].
        label_l: their labels ``(B_l, D, H, W)``, int64 class ids.
        image_u: unlabeled images ``(B_u, 1, D, H, W)``; ``B_u == 0`` for methods that use none.
    """

    image_l: torch.Tensor
    label_l: torch.Tensor
    image_u: torch.Tensor


@dataclass
class MethodConfig:
    """Fields every method has. Subclasses add their own hyper-parameters with the paper's defaults.

    The defaults are the DHC-family protocol (docs/algorithms.md §4.4): V-Net nf=32 with BatchNorm and dropout,
    SGD Nesterov momentum 0.9, weight decay 3e-5, base lr 0.03, poly decay (power 0.9).
    Profiles ``smoke``/``cpu`` override backbone width the same way for every method.
    """

    base_filters: int = 32
    norm: Norm = "batch"
    dropout: bool = True
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_power: float = 0.9


class Method(abc.ABC):
    """Base class. Subclasses set ``name``/``group``/``Config`` and implement ``build``, ``train_step``,
    ``predict`` and ``inference_modules``.

    Class attributes:
        batch_policy: what the sampler puts in a batch. ``two_stream``: the profile's labeled and
            unlabeled crops (semi-supervised methods); ``labeled_only``: only the labeled crops (the
            supervised lower bound sees exactly the labeled data a semi-supervised method sees);
            ``all_labeled``: labeled crops in every slot (the fully supervised upper bound).
        label_pool: ``labeled`` (the split's labeled cases) or ``all`` (every training label: the
            fully supervised upper bound).
        unsupervised_weight_field: name of the config field that weights the unlabeled-data loss
            (the conformance tests zero it to check that the term sends a gradient).
        reference_selection / reference_augmentation: the names of the reference code's model
            selection rule and augmentation (used when a study asks for ``reference``).
        version: the behaviour version, part of every run key. Bump it in the method's module
            whenever a change alters what the method computes (a fixed bug, a new default): runs of
            the old behaviour are then trained again instead of being reused. ``tests/golden/``
            holds each method's numeric fingerprint per version, and a test fails when the numbers
            change while the version does not.
        accelerator_version: the behaviour version of forms the method uses on an accelerator only
            (a GPU form of an operation whose CPU form is unchanged); part of the run key on a
            non-CPU device when not "1", so CPU runs keep their keys.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    accelerator_version: ClassVar[str] = "1"
    title: ClassVar[str] = ""  # display name in tables, e.g. "Mean Teacher"
    group: ClassVar[Group] = "general"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    batch_policy: ClassVar[Literal["two_stream", "labeled_only", "all_labeled"]] = "two_stream"
    label_pool: ClassVar[Literal["labeled", "all"]] = "labeled"
    unsupervised_weight_field: ClassVar[str | None] = None  # config field scaling the unlabeled loss
    # The reference repository's model selection and augmentation (benchmarks.selection, the sampler),
    # used when a study asks for ``reference``: the DHC family validates on centre crops with early
    # stopping and flips crops in-plane; the magic-cube family (MagicNet, GA, TAK) only crops.
    reference_selection: ClassVar[str] = "dhc"
    reference_augmentation: ClassVar[str] = "flip_xy"
    # The cost of one train step relative to the labeled-only V-Net's under the cpu profile (medians of
    # ``make bench``, fp32, AVX-512 kind, 2026-12-06). A scheduling hint only: the local pool hands out
    # the costliest cells first (benchmarks/local_pool.py, rule 5); it changes no number of any run.
    relative_step_cost: ClassVar[float] = 1.0

    def __init__(self, config: MethodConfig, num_classes: int, max_iterations: int, in_channels: int = 1,
                 device: str | torch.device = "cpu", patch: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        """Args:
            patch: the training patch ``(D, H, W)`` (methods whose layers depend on it, e.g. the
                magic-cube location head, size them from it; None: the reference 96^3).
            class_names: the dataset's class names in label order (TAK encodes text about them);
                None: ``class_0 .. class_{C-1}``.
        """
        self.config = config
        self.num_classes = num_classes
        self.patch = tuple(patch) if patch is not None else (96, 96, 96)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.in_channels = in_channels
        self.max_iterations = max_iterations
        self.device = torch.device(device)
        self.iterations_per_epoch = 1
        self.num_unlabeled_cases = 0
        """Unlabeled training cases of the split; set by the harness before :meth:`observe_data`."""
        self.build()
        for module in self.modules().values():
            module.to(self.device)

    # -- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self) -> None:
        """Create networks and optimisers (``self.optimizers``)."""

    @abc.abstractmethod
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """One optimisation step at iteration ``step`` (0-based); returns scalar logs."""

    @abc.abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, D, H, W)`` for images ``(B, 1, D, H, W)`` (no gradient, eval mode)."""

    @abc.abstractmethod
    def inference_modules(self) -> dict[str, nn.Module]:
        """Modules run by :meth:`predict` (counted for params/FLOPs)."""

    # -- shared helpers -----------------------------------------------------------------------
    def make_vnet(self, init: Literal["default", "kaiming", "xavier"] = "default") -> VNet:
        """A V-Net with this config's backbone settings."""
        net = VNet(self.in_channels, self.num_classes, self.config.base_filters, self.config.norm,
                   self.config.dropout)
        if init != "default":
            for m in net.modules():
                if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                    (nn.init.kaiming_normal_ if init == "kaiming" else nn.init.xavier_normal_)(m.weight)
                elif isinstance(m, nn.BatchNorm3d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        return net

    def make_sgd(self, *modules: nn.Module) -> torch.optim.SGD:
        """SGD over ``modules`` with the config's lr, momentum, Nesterov flag and weight decay."""
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        c = self.config
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                               weight_decay=c.weight_decay)

    grad_scaler: "torch.amp.GradScaler | None" = None  # set by the harness under fp16 (CUDA)
    grad_clip_norm: float = 0.0  # set by the harness from the profile: cap on the gradient norm of the
    # parameters each backward_step updates (0: none, as the references)

    def backward_step(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer] | None = None) -> None:
        """Zero the gradients, back-propagate ``loss`` and step ``optimizers`` (default: all), through
        the gradient scaler when the harness trains in fp16."""
        optimizers = list(self.optimizers if optimizers is None else optimizers)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if self.grad_scaler is None:
            loss.backward()
            self._clip_gradients(optimizers)
            for opt in optimizers:
                opt.step()
            return
        self.grad_scaler.scale(loss).backward()
        if self.grad_clip_norm:
            for opt in optimizers:
                self.grad_scaler.unscale_(opt)
            self._clip_gradients(optimizers)
        for opt in optimizers:
            self.grad_scaler.step(opt)
        self.grad_scaler.update()

    def _clip_gradients(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Scale the gradients of every parameter that ``optimizers`` update so that their joint L2 norm
        is at most ``grad_clip_norm`` (a profile setting, the same for every method; 0: off)."""
        if self.grad_clip_norm:
            params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]
                      if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)

    def segmentation_networks(self) -> dict[str, nn.Module]:
        """Every network that maps images ``(B, 1, D, H, W)`` to logits (student and teacher, both
        co-trained networks): Table 6's all-networks FLOPs convention runs each once. Default: all
        modules; a method with other modules (e.g. critics on probability maps) narrows it."""
        return self.modules()

    def modules(self) -> dict[str, nn.Module]:
        """Every ``nn.Module`` attribute (networks, teachers), by attribute name."""
        return {k: v for k, v in vars(self).items() if isinstance(v, nn.Module)}

    def train(self, mode: bool = True) -> None:
        for module in self.modules().values():
            module.train(mode)

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers and any extra state of the method (for checkpoints)."""
        state = {"modules": {k: m.state_dict() for k, m in self.modules().items()},
                 "optimizers": [o.state_dict() for o in self.optimizers],
                 "extra": self.extra_state()}
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.load_extra_state(state["extra"])

    @classmethod
    def check_available(cls, config: MethodConfig) -> None:
        """Raise an ``OrganbenchError`` naming what is missing when an input the config needs is absent
        (e.g. text-encoder weights); the default needs nothing."""

    def run_tags(self) -> dict[str, str]:
        """Extra MLflow tags describing inputs outside the config (e.g. TAK's text encoder checksum)."""
        return {}

    def observe_data(self, labeled_labels: Sequence[np.ndarray], iterations_per_epoch: int) -> None:
        """Called once before training with the labeled pool's label volumes and the number of
        iterations that make one pass over the unlabeled cases (the references' "epoch").

        Methods that initialise statistics from the labeled set (DHC's distribution weights, CLD's
        class weights) or count epochs (faithful UA-MT EMA) override it.
        """
        self.iterations_per_epoch = iterations_per_epoch

    def extra_state(self) -> dict[str, Any]:
        """Non-module state (class weights, banks); override when a method has some."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    @classmethod
    def resolve_config(cls, overrides: dict[str, Any], source: str = "config") -> MethodConfig:
        """``Config`` with ``overrides`` applied; an unknown key or a value of the wrong type raises a
        :class:`~methods.common.errors.ConfigError` naming ``source``, the key and what it expects."""
        checked = check_fields(cls.Config, overrides, source)
        return cls.Config(**checked)


class StudentPredicts(Method):
    """A method whose ``student`` network predicts; its EMA teacher serves training only."""

    student: nn.Module

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.student.eval()
        return self.student(x)

    def inference_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}
