"""``tak``: Textual Anatomical Knowledge (the seed paper; docs/algorithms.md §4.1) on MagicNet + GA.

The GA-MagicNet student (``methods/ga.py``) with two additions driven by text about each organ's
position and shape (``tak/knowledge``, encoded once by ``tak/encoders``, cached on disk):

- a text-driven head (``tak/model.py``): per sample and class, a controller turns [global image code;
  class text code] into the weights of a small 1x1x1 head;
- cross-modal contrastive alignment (``tak/contrast.py``): at x3, x4, x5, sampled voxel embeddings of
  12 views (original, cross-image recovered, within-image re-assembled) and the projected text
  embeddings are pulled together by class (labels, or entropy-filtered pseudo-labels).

Loss: ``L_sup + 0.1 L_loc + lambda_u L_cons + lambda_c L_con`` (lambda_c = 0.1, lambda_N = 40 voxels
per class and view at x3, half at x4, a quarter at x5, tau = 0.07, contrast after epoch 20 of 161).

Where this does not follow the reference, and why:
- Epoch-based schedules (contrast start at epoch 20, consistency ramp over 160 epochs, entropy
  threshold ramp over 100) are placed on the study's budget as fractions of the reference's 161
  epochs, so every profile sees the same schedule shape (the reference's epoch is one pass over the
  unlabeled cases, which the ``cpu`` budget would never complete).
- Default text encoder ``minilm`` (shipped offline); the paper's BiomedCLIP is ``text_encoder:
  biomedclip`` with local weights. Default knowledge: the shipped, hand-written descriptions.
- ``cube_grid`` per profile as for MagicNet; TAK's head needs no change (any text width works).
- The reference crashes at iteration 101 (``T_dist`` undeclared); ``dist_temperature`` is 1.0.
- ``lambda_N = 0`` (Table 8's first column) means no contrastive term, as the published value shows.
- The contrastive loss is computed in fp32 under autocast too (bf16 on the CPU, fp16 on CUDA), where the
  reference's similarity product runs in fp16; it is a block of rows at a time (``tak/contrast.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from methods.common.errors import ConfigError
from methods.common.ga_losses import GALossConfig, GALosses
from methods.common.kernels import class_argmax
from methods.common.magic_cube import assemble, unmix
from methods.common.magicnet_parts import MagicCubeConfig
from methods.common.ramps import sigmoid_rampup
from methods.magicnet import MagicForward, MagicNet
from methods.registry import register


@dataclass
class TAKConfig(MagicCubeConfig, GALossConfig):
    nesterov: bool = True
    knowledge: str = "auto"
    """A shipped knowledge base (``amos``, ``synapse``), a YAML path, or ``auto`` (the shipped base that
    names every class of the dataset)."""
    prompt_mode: str = "position+shape"
    """Table 5: ``name``, ``position``, ``shape`` or ``position+shape``."""
    text_encoder: str = "minilm"
    """Table 9: ``minilm`` (offline default), ``biomedclip`` (paper), ``clip``, ``pmc-clip``, ``unimed-clip``."""
    text_weights: str | None = None
    """A local weights folder for the CLIP-family encoders (default: ``weights/<encoder>/``)."""
    contrast: bool = True
    """Table 5's "Contrast" column."""
    contrast_weight: float = 0.1
    """lambda_c (Table 7)."""
    samples_per_class: int = 40
    """lambda_N (Table 8): voxels per class and view at x3 (x4: half, x5: a quarter); 0 = no contrast."""
    temperature: float = 0.07
    sampler_draws: Literal["over_budget", "every_class"] = "over_budget"
    """``over_budget`` (the reference): random numbers are drawn only for classes with more voxels than
    their budget; ``every_class``: every class is permuted (this suite's version 1). CPU only: an
    accelerator draws every class's sample in one sort (``tak.contrast.sample_voxels_sorted``)."""
    contrast_start_epoch: float = 20
    reference_epochs: int = 161
    consistency_ramp_epochs: float = 160
    entropy_ramp_epochs: float = 100


# Bump when what this method computes changes (part of the run key). 3: the contrastive loss runs in
# fp32 under autocast too (version 2 computed its similarity matrix in bf16 / fp16 there). 4: blending
# starts at a share of the budget (MagicNet 2).
@register("tak", title="TAK", group="imbalance", version="4", config=TAKConfig)
class TAK(GALosses, MagicNet):
    relative_step_cost = 7.4  # scheduling hint (methods.base.Method)
    # 2: on an accelerator the dynamic head is block-diagonal, the contrastive loss dense and the voxel
    # sampler one sort (tak/model.py, tak/contrast.py): the same maths, another random stream.
    accelerator_version = "2"
    reference_selection = "tak"
    reference_augmentation = "none"
    config: TAKConfig
    unsupervised_weight_field = "consistency"
    recovers_encoder_features = True  # the head's global image code needs the recovered x3..x5

    def build(self) -> None:
        if self.config.reference_ramp:
            raise ConfigError("tak: reference_ramp does not apply (TAK's consistency ramp spans its epochs)")
        self.text, self.text_tags = self.text_embeddings()
        super().build()

    @classmethod
    def check_available(cls, config: TAKConfig) -> None:
        from tak.encoders import encoder_info
        encoder_info(config.text_encoder, config.text_weights)  # MissingWeightsError names what to download

    def text_embeddings(self) -> tuple[torch.Tensor, dict[str, str]]:
        """``(2, C, text_dim)`` embeddings of the prompt pair of every class, and their record."""
        from tak.encoders import embed_texts
        from tak.knowledge import knowledge_sha256, load_knowledge, prompt_pairs
        c = self.config
        kb = load_knowledge(self.knowledge_source())
        first, second = prompt_pairs(kb, self.class_names, c.prompt_mode)
        vectors, record = embed_texts(c.text_encoder, first + second, c.text_weights)
        tags = {**record, "knowledge": kb.version, "knowledge_sha256": knowledge_sha256(kb),
                "prompt_mode": c.prompt_mode}
        return vectors.reshape(2, self.num_classes, -1), tags

    def knowledge_source(self) -> str:
        if self.config.knowledge != "auto":
            return self.config.knowledge
        from tak.knowledge import load_knowledge
        for name in ("amos", "synapse"):
            if set(self.class_names) <= set(load_knowledge(name).organs):
                return name
        raise ConfigError(f"tak: no shipped knowledge base names every class {self.class_names}; "
                          f"set method_overrides.tak.knowledge to a YAML file")

    def make_model(self) -> nn.Module:
        from tak.model import TAKNetwork
        return TAKNetwork(self.make_vnet(), self.text, self.make_location_head(bias=False))

    def run_tags(self) -> dict[str, str]:
        return dict(self.text_tags)

    # -- schedules on the reference's epochs --------------------------------------------------
    def reference_epoch(self, step: int) -> float:
        return step * self.config.reference_epochs / max(self.max_iterations, 1)

    def consistency_weight(self, step: int) -> float:
        return self.config.consistency * sigmoid_rampup(self.reference_epoch(step), self.config.consistency_ramp_epochs)

    def entropy_threshold(self, step: int) -> float:
        """``ln 2 (0.75 + 0.25 rampup(epoch, 100))`` nats: unlabeled voxels above it are not sampled."""
        ramp = sigmoid_rampup(self.reference_epoch(step), self.config.entropy_ramp_epochs)
        return float(torch.log(torch.tensor(2.0))) * (0.75 + 0.25 * ramp)

    def contrast_active(self, step: int) -> bool:
        c = self.config
        return c.contrast and c.samples_per_class > 0 and self.reference_epoch(step) > c.contrast_start_epoch

    # -- cube re-assembly with the encoder features the head needs ----------------------------
    def assemble_volumes(self, cube_tensors: list[torch.Tensor], n: int) -> list[torch.Tensor]:
        t = self.config.cube_unmix_transposed
        return [assemble(f.reshape(n, -1, *f.shape[1:]), self.grid, t) for f in cube_tensors]

    def assemble_cubes(self, model: nn.Module, cube_feats: list[torch.Tensor], n: int) -> torch.Tensor:
        x9 = model.decode(cube_feats)
        *feats, whole = self.assemble_volumes([*cube_feats[-3:], x9], n)
        return model.head(feats, whole)

    def cube_logits_for_blending(self, cube_feats: list[torch.Tensor], n_l: int, n_u: int) -> torch.Tensor:
        """TAK's ``Z_cube``: the teacher's decoder and head (per cube, with the student's class codes)
        on the student's cube features of the unlabeled samples, re-assembled."""
        k = cube_feats[0].shape[0] // (n_l + n_u)
        unlabeled = [f[n_l * k:] for f in cube_feats]
        logits = self.teacher.head(unlabeled, self.teacher.decode(unlabeled), self.student.class_codes())
        return self.assemble_volumes([logits], n_u)[0]

    # -- step 9: the contrastive alignment on top of GA-MagicNet's losses ----------------------
    def extra_losses(self, forward: MagicForward, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.contrast_active(step):
            return forward.loss.new_zeros(()), {"loss_con": 0.0}
        s, n = self.student, forward.labels.shape[0] + forward.teacher_logits.shape[0]
        loss = self.contrastive_loss(step, forward.labels, forward.teacher_logits, forward.pseudo, forward.blended,
                                     s.project(forward.feats),
                                     [unmix(e, forward.perms, self.grid) for e in s.project(forward.mixed_feats)],
                                     self.assemble_volumes(s.project(forward.cube_feats), n))
        return self.config.contrast_weight * loss, {"loss_con": loss.item()}

    def contrastive_loss(self, step: int, labels: torch.Tensor, teacher_logits: torch.Tensor,
                         pseudo_mix: torch.Tensor, blended: torch.Tensor | None,
                         original: list[torch.Tensor], cross: list[torch.Tensor], cubes: list[torch.Tensor]
                         ) -> torch.Tensor:
        """Sum over x3, x4, x5 of the supervised contrastive loss over sampled voxels of the 12 views
        and the class-labelled text anchors (docs/algorithms.md §4.1 step 9)."""
        from tak.contrast import downsample_labels, entropy, sample_voxels, supervised_contrastive
        with torch.no_grad():
            threshold = self.entropy_threshold(step)
            probs = teacher_logits.softmax(1)
            pseudo = class_argmax(probs).masked_fill(entropy(probs) > threshold, -1)
            mix_probs = blended.softmax(1) if blended is not None else probs
            pseudo_mix = pseudo_mix.masked_fill(entropy(mix_probs) > threshold, -1)
            view_labels = torch.cat([labels, pseudo, labels, pseudo, labels, pseudo_mix])  # same order as views
        texts = self.student.text_anchors()
        text_labels = torch.arange(self.num_classes, device=labels.device).repeat(2)
        total = labels.new_zeros((), dtype=torch.float32)
        for scale, (o, m, q, text) in enumerate(zip(original, cross, cubes, texts)):
            views = torch.cat([o, m, q])
            grid_labels = downsample_labels(view_labels, tuple(views.shape[2:]))
            voxels, voxel_labels = sample_voxels(views, grid_labels, max(1, self.config.samples_per_class >> scale),
                                                 draw_all=self.config.sampler_draws == "every_class")
            total = total + supervised_contrastive(torch.cat([voxels, text]), torch.cat([voxel_labels, text_labels]),
                                                   self.config.temperature)
        return total
