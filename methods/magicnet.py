"""``magicnet``: MagicNet (Chen et al., CVPR 2023; docs/algorithms.md §4.2), the skeleton GA and TAK build on.

A Mean Teacher whose student learns from magic cubes. Per iteration, on ``x = [labeled; unlabeled]``:

1. the student segments ``x`` (``O``);
2. cross-image partition and recovery: the batch is cut into a grid of cubes, every cube position's
   cubes are shuffled across the batch, the mixed batch is encoded and decoded, and the recovered
   penultimate feature gives ``O_mix``;
3. the teacher (EMA) segments the noisy unlabeled images (``Z_T``, pseudo-label ``Y``);
4. within-image partition: every sample's cubes are encoded alone; a location head classifies each
   cube's position from its bottleneck; the labeled samples' cube decodings are re-assembled (``O_within``);
5. supervised ``[CE(O) + Dice(O) + Dice(O_mix) + Dice(O_within)] / 4`` on the labeled samples;
6. cube-wise pseudo-label blending (after ``blend_start_fraction`` of the budget): ``Z = (1 - w) Z_T + w Z_cube`` with
   ``w = d[Y]`` from the class distribution of recent pseudo-labels and ``Z_cube`` the student's
   re-assembled cube decoding of the unlabeled samples;
7. consistency ``Dice(O_mix, argmax Z)`` on the unlabeled samples, plus ``0.1`` x location CE.

Where this does not follow the reference, and why:
- ``cube_grid`` is a profile setting: the ``smoke``/``cpu`` profiles' 32^3 patch holds a 2 x 2 x 1 grid
  of 16 x 16 x 32 cubes (3 x 3 x 3 cubes of 32^3 need a 96^3 patch; 16^3 cubes end in a 1^3
  bottleneck that InstanceNorm cannot normalise). The location head's input width follows the
  patch (``16 nf x`` bottleneck voxels per cube) and it has one output per cube position.
- The consistency ramp spans the run's budget (``reference_ramp=True`` restores
  ``rampup(iter // 350, 200)``, which assumes 70k iterations).
- The unlabeled cube decodings feed only the (argmax) pseudo-label, so they run without gradient;
  the losses are unchanged.
- Model selection: MagicNet's own protocol tests the last iteration (rule ``magicnet``); the ``smoke``
  and ``cpu`` profiles test the last iteration of every method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.errors import ConfigError
from methods.base import Batch, StudentPredicts
from methods.common.ema import ema_update, make_teacher
from methods.common.ga_losses import magic_dice
from methods.common.kernels import class_argmax
from methods.common.magic_cube import as_grid, assemble, location_labels, mix_across_batch, partition, unmix
from methods.common.magicnet_parts import ClassDistributionLogger, LocationHead, MagicCubeConfig
from methods.common.ramps import sigmoid_rampup
from methods.common.uncertainty import clipped_noise
from methods.common.vnet import VNet
from methods.registry import register


MIN_BOTTLENECK_VOXELS = 4
"""The fewest bottleneck voxels (``cube / 16`` per axis) a cube may have under InstanceNorm. Over two
voxels ``a, b`` InstanceNorm returns ``+-(a - b) / |a - b|`` per channel: after the ReLU each channel
says only which voxel is larger (a 1x1x2 bottleneck of 16x16x32 cubes, the 2 x 2 x 1 grid in a 32^3
patch), the location loss stays at ln(cubes), and the gradient through the norm grows as
``1 / |a - b|``. The reference's 32^3 cubes have 8 voxels."""


@dataclass
class MagicForward:
    """What one iteration's forward passes produced (the loss so far, and what TAK's extra terms need).

    ``feats``/``mixed_feats``/``cube_feats``: encoder features of the batch, of the cross-image mixed
    batch (permutation ``perms``) and of every sample's cubes; ``pseudo``: the unlabeled samples'
    (blended) pseudo-labels and ``blended`` their blended logits (None before blending starts).
    """

    loss: torch.Tensor
    logs: dict[str, float]
    labels: torch.Tensor
    feats: list[torch.Tensor]
    mixed_feats: list[torch.Tensor]
    perms: torch.Tensor
    cube_feats: list[torch.Tensor]
    teacher_logits: torch.Tensor
    pseudo: torch.Tensor
    blended: torch.Tensor | None


class MagicModel(nn.Module):
    """V-Net plus the cube-location head. ``encode``/``decode``/``head`` expose the stages the
    partition-recovery steps recombine; ``forward`` is plain segmentation (logits)."""

    def __init__(self, backbone: VNet, location_head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.location_head = backbone, location_head

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.encode(x)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.backbone.decode(feats)

    def head(self, feats: list[torch.Tensor] | None, x9: torch.Tensor) -> torch.Tensor:
        """Logits from the decoder feature ``x9`` (MagicNet ignores the encoder features)."""
        return self.backbone.out_conv(x9)

    def inference_parts(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        return self.head(feats, self.decode(feats))


# Bump when what this method computes changes (part of the run key). 2: blending starts at a share
# of the budget (``blend_start_fraction``), no longer at an absolute iteration 100.
@register("magicnet", title="MagicNet", group="general", version="2",
          config=MagicCubeConfig)
class MagicNet(StudentPredicts):
    relative_step_cost = 5.4  # scheduling hint (methods.base.Method)
    reference_selection = "magicnet"
    reference_augmentation = "none"
    unsupervised_weight_field = "consistency"
    config: MagicCubeConfig
    recovers_encoder_features = False  # TAK's head needs the recovered encoder features too

    # -- networks -----------------------------------------------------------------------------
    def build(self) -> None:
        self.grid = as_grid(self.config.cube_grid)
        self.student = self.make_model()
        self.teacher = make_teacher(self.student)
        self.optimizers = [self.make_sgd(self.student)]
        self.class_logger = ClassDistributionLogger(self.num_classes, self.config.dist_window)

    def make_model(self) -> nn.Module:
        return MagicModel(self.make_vnet(), self.make_location_head())

    def make_location_head(self, bias: bool = True) -> LocationHead:
        """Input width ``16 nf x`` bottleneck voxels of one cube (``patch / grid / 16``; reference:
        256 x 2^3 = 2048), one output per cube position."""
        self.check_patch(self.patch)
        cube = [p // g // 16 for p, g in zip(self.patch, self.grid)]
        return LocationHead(16 * self.config.base_filters * cube[0] * cube[1] * cube[2],
                            self.grid[0] * self.grid[1] * self.grid[2], self.config.location_hidden, bias)

    # -- schedule -----------------------------------------------------------------------------
    def consistency_weight(self, step: int) -> float:
        if self.config.reference_ramp:
            return self.config.consistency * sigmoid_rampup(step // 350, 200)
        return self.config.consistency * sigmoid_rampup(step, self.max_iterations)

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        return clipped_noise(x, c.noise_std, c.noise_clip)

    # -- losses (GA swaps these) --------------------------------------------------------------
    def supervised_ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def dice(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return magic_dice(probs, labels)

    # -- the partition-recovery steps ---------------------------------------------------------
    def check_patch(self, shape: tuple[int, ...]) -> None:
        """A clear error when the patch cannot hold the cube grid (or differs from the built one)."""
        cube = [sz // g for sz, g in zip(shape, self.grid)]
        if any(sz % g for sz, g in zip(shape, self.grid)) or any(c % 16 for c in cube):
            raise ConfigError(f"{self.name}: patch {list(shape)} with cube_grid {list(self.grid)} gives cubes "
                             f"{cube}; every cube dimension must be a multiple of 16")
        bottleneck = [c // 16 for c in cube]
        if self.config.norm == "instance" and bottleneck[0] * bottleneck[1] * bottleneck[2] < MIN_BOTTLENECK_VOXELS:
            raise ConfigError(f"{self.name}: cubes {cube} (patch {list(shape)}, cube_grid {list(self.grid)}) reach a "
                             f"{'x'.join(map(str, bottleneck))} bottleneck; InstanceNorm over fewer than "
                             f"{MIN_BOTTLENECK_VOXELS} voxels leaves only the sign of their difference, so the location "
                             f"head cannot learn the cube positions: use cubes of at least 16x32x32 (reference: 32^3)")
        if tuple(shape) != tuple(self.patch):
            raise ConfigError(f"{self.name}: batch patch {list(shape)} differs from the patch {list(self.patch)} "
                             f"the location head was built for")

    def recovered_logits(self, mixed_feats: list[torch.Tensor], mixed_x9: torch.Tensor,
                         perms: torch.Tensor) -> torch.Tensor:
        """Cross-image recovery: MagicNet un-permutes only the decoder feature (TAK also x3..x5)."""
        feats = [unmix(f, perms, self.grid) for f in mixed_feats[2:]] if self.recovers_encoder_features else None
        return self.student.head(feats, unmix(mixed_x9, perms, self.grid))

    def location_loss(self, cube_feats: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        """Mean over samples of the 27-way (``K``-way) CE of each sample's cubes, one head call per
        sample (its BatchNorm1d normalises over that sample's cubes, as in the reference)."""
        k = cube_feats[-1].shape[0] // batch_size
        target = location_labels(self.grid, cube_feats[-1].device)
        flat = cube_feats[-1].flatten(1).reshape(batch_size, k, -1)
        return torch.stack([F.cross_entropy(self.student.location_head(flat[b]), target)
                            for b in range(batch_size)]).mean()

    def assemble_cubes(self, model: nn.Module, cube_feats: list[torch.Tensor], n: int) -> torch.Tensor:
        """Decode ``n`` samples' cube features and re-assemble the logits ``(n, C, D, H, W)``."""
        x9 = model.decode(cube_feats)
        whole = assemble(x9.reshape(n, -1, *x9.shape[1:]), self.grid, self.config.cube_unmix_transposed)
        return model.head(None, whole)

    def cube_logits_for_blending(self, cube_feats: list[torch.Tensor], n_l: int, n_u: int) -> torch.Tensor:
        """``Z_cube``: the student's re-assembled decoding of the unlabeled samples' cubes."""
        k = cube_feats[0].shape[0] // (n_l + n_u)
        return self.assemble_cubes(self.student, [f[n_l * k:] for f in cube_feats], n_u)

    def blended_pseudo_labels(self, teacher_logits: torch.Tensor, cube_feats: list[torch.Tensor], n_l: int,
                              step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``argmax [(1 - w) Z_T + w Z_cube]`` after the blending start (``argmax Z_T`` before) and the
        blended logits (None before)."""
        weights = self.class_logger.class_weights(self.config.dist_temperature)
        if step <= self.config.blend_start_fraction * self.max_iterations or weights is None:
            return class_argmax(teacher_logits), None
        pseudo = class_argmax(teacher_logits)
        w = weights.to(teacher_logits.device)[pseudo].unsqueeze(1)
        cube = self.cube_logits_for_blending(cube_feats, n_l, teacher_logits.shape[0])
        blended = (1 - w) * teacher_logits + w * cube
        return class_argmax(blended), blended

    # -- one iteration ------------------------------------------------------------------------
    def forward_losses(self, batch: Batch, step: int) -> MagicForward:
        """Steps 1-8: every forward pass and the MagicNet losses (supervised, location, consistency)."""
        c, s = self.config, self.student
        n_l, n_u = batch.image_l.shape[0], batch.image_u.shape[0]
        x, labels = torch.cat([batch.image_l, batch.image_u]), batch.label_l
        self.check_patch(tuple(x.shape[2:]))
        s.train()
        self.teacher.train()
        feats = s.encode(x)                                                   # 1. student
        logits = s.head(feats, s.decode(feats))
        mixed, perms = mix_across_batch(x, self.grid)                         # 2. cross-image
        mixed_feats = s.encode(mixed)
        logits_mix = self.recovered_logits(mixed_feats, s.decode(mixed_feats), perms)
        with torch.no_grad():                                                 # 3. teacher
            teacher_logits = self.teacher(self.noisy(batch.image_u))
        cube_feats = s.encode(partition(x, self.grid).flatten(0, 1))          # 4. within-image
        loss_loc = self.location_loss(cube_feats, n_l + n_u)
        k = cube_feats[0].shape[0] // (n_l + n_u)
        logits_within = self.assemble_cubes(s, [f[: n_l * k] for f in cube_feats], n_l)
        loss_sup = (self.supervised_ce(logits[:n_l], labels) + self.dice(logits[:n_l].softmax(1), labels)
                    + self.dice(logits_mix[:n_l].softmax(1), labels)              # 5. supervised
                    + self.dice(logits_within.softmax(1), labels)) / 4
        with torch.no_grad():                                                 # 6. blending
            pseudo, blended = self.blended_pseudo_labels(teacher_logits, [f.detach() for f in cube_feats], n_l, step)
            self.class_logger.update(pseudo, step)
        loss_cons = self.dice(logits_mix[n_l:].softmax(1), pseudo)            # 7. consistency
        weight = self.consistency_weight(step)
        loss = loss_sup + c.location_weight * loss_loc + weight * loss_cons
        logs = {"loss_sup": loss_sup.item(), "loss_loc": loss_loc.item(), "loss_cons": loss_cons.item(),
                "cons_weight": weight}
        return MagicForward(loss, logs, labels, feats, mixed_feats, perms, cube_feats, teacher_logits, pseudo,
                            blended)

    def extra_losses(self, forward: MagicForward, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Terms a subclass adds on top of MagicNet's (TAK: the contrastive alignment)."""
        return forward.loss.new_zeros(()), {}

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        forward = self.forward_losses(batch, step)
        extra, extra_logs = self.extra_losses(forward, step)
        loss = forward.loss + extra
        self.backward_step(loss)
        ema_update(self.teacher, self.student, step, self.config.ema_decay)
        return {"loss": loss.item(), **forward.logs, **extra_logs}

    def inference_modules(self) -> dict[str, nn.Module]:
        return self.student.inference_parts()

    def extra_state(self) -> dict[str, Any]:
        return {"class_logger": self.class_logger.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.class_logger.load(state["class_logger"])
