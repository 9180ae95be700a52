"""A synthetic abdominal CT cohort with the AMOS class map (the embedded default; labelled synthetic).

Anatomy is built from implicit shapes in normalised body coordinates ``(x, y, z)``: x from the
patient's right (0) to left (1), y from anterior (0) to posterior (1), z from the pelvis (0) to the
diaphragm (1). Each subject gets its own body scale, organ positions, sizes and a smooth random
deformation of every organ's surface. Organs never overlap: they are painted from the smallest to
the largest, each only on voxels still free. Intensities are CT-like HU with noise, partial-volume
blur and a smooth bias field.

The generator is one implementation of :class:`CohortGenerator`; :func:`write_cohort` turns any
generator into a dataset folder (NIfTI + dataset.json + split files), written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from benchmarks.data.cohort_splits import (AMOS_LABELED, AMOS_MRI_COUNTS, AMOS_SPLIT_SIZES, SYNAPSE_LABELED,
                                           SYNAPSE_SPLIT_SIZES, modality_plan, synthetic_split_ids)

AMOS_CLASSES = ("background", "spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver",
                "stomach", "aorta", "inferior_vena_cava", "pancreas", "right_adrenal_gland",
                "left_adrenal_gland", "duodenum", "bladder", "prostate_uterus")
AMOS_LARGE = ("liver", "stomach", "spleen", "left_kidney", "right_kidney", "bladder")
SYNAPSE_CLASSES = ("background", "spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver",
                   "stomach", "aorta", "inferior_vena_cava", "portal_splenic_veins", "pancreas",
                   "right_adrenal_gland", "left_adrenal_gland")
SYNAPSE_LARGE = ("liver", "stomach", "spleen", "left_kidney", "right_kidney")
PORTAL_SPLENIC_VEINS = 16  # painted only for the Synapse label set (AMOS does not label it)
# internal (AMOS) id -> Synapse id; duodenum, bladder and prostate/uterus are unlabelled in Synapse
AMOS_TO_SYNAPSE = {**{i: i for i in range(10)}, 10: 11, 11: 12, 12: 13, 13: 0, 14: 0, 15: 0,
                   PORTAL_SPLENIC_VEINS: 10}


class CohortGenerator(Protocol):
    """Anything that makes one labelled volume per seed."""

    name: str
    version: str  # bumped whenever generate() makes other volumes for the same seed (part of run keys)
    class_names: tuple[str, ...]
    large_organs: tuple[str, ...]
    split_sizes: dict[str, int]
    labeled_counts: dict[int, int]

    def generate(self, shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """Return ``(image HU int16 (X,Y,Z), label uint8 (X,Y,Z), spacing mm)`` for subject ``seed``.

        A generator with ``mri_counts`` (a dict: split list -> MRI-like subjects in it) also takes
        ``modality=`` ("ct" or "mri"): :func:`write_cohort` then sets each case's modality from the split.
        """
        ...


@dataclass(frozen=True)
class Organ:
    """An organ as ``kind`` with centre/radii in normalised coordinates and a mean HU."""

    label: int
    kind: str  # ellipsoid | tube | cloop | jshape
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: float
    z_range: tuple[float, float] = (0.0, 1.0)


# Painted in this order (small first), each only where nothing is painted yet.
ORGANS = (
    Organ(11, "ellipsoid", (0.39, 0.70, 0.74), (0.03, 0.019, 0.04), 55),   # right adrenal
    Organ(12, "ellipsoid", (0.61, 0.70, 0.75), (0.029, 0.018, 0.039), 55),   # left adrenal
    Organ(5, "tube", (0.53, 0.62, 0.0), (0.017, 0.017, 0.0), 40, (0.86, 1.0)),   # esophagus
    Organ(4, "ellipsoid", (0.31, 0.30, 0.64), (0.043, 0.043, 0.061), 10),     # gallbladder
    Organ(8, "tube", (0.54, 0.67, 0.0), (0.027, 0.027, 0.0), 170, (0.30, 1.0)),  # aorta
    Organ(9, "tube", (0.43, 0.65, 0.0), (0.028, 0.0265, 0.0), 140, (0.30, 0.95)),  # IVC
    Organ(10, "ellipsoid", (0.54, 0.55, 0.63), (0.168, 0.036, 0.039), 85),    # pancreas
    Organ(13, "cloop", (0.36, 0.52, 0.60), (0.075, 0.027, 0.027), 35),       # duodenum
    Organ(15, "ellipsoid", (0.50, 0.52, 0.08), (0.085, 0.068, 0.076), 45),     # prostate/uterus
    Organ(2, "ellipsoid", (0.30, 0.73, 0.55), (0.069, 0.063, 0.114), 160),     # right kidney
    Organ(3, "ellipsoid", (0.70, 0.73, 0.58), (0.079, 0.072, 0.132), 160),     # left kidney
    Organ(14, "ellipsoid", (0.50, 0.33, 0.12), (0.097, 0.081, 0.073), 5),       # bladder
    Organ(1, "ellipsoid", (0.76, 0.64, 0.80), (0.094, 0.138, 0.126), 110),     # spleen
    Organ(7, "jshape", (0.62, 0.36, 0.76), (0.119, 0.089, 0.107), 30),         # stomach
    Organ(6, "ellipsoid", (0.30, 0.45, 0.82), (0.2, 0.237, 0.146), 100),      # liver
)


def _smooth_noise(rng: np.random.Generator, n: int, shape: tuple[int, int, int], cells: int = 4) -> np.ndarray:
    """``n`` smooth random fields of ``shape`` (trilinear upsampling of a ``cells^3`` Gaussian grid)."""
    coarse = torch.from_numpy(rng.standard_normal((1, n, cells, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0].numpy()


# Organ HU per CT contrast phase (version 2; approximate literature means, AMOS-like mix of phases).
# Order: the AMOS ids 1..15. Native: no contrast; arterial: aorta and renal cortex bright; portal venous:
# liver, spleen and portal system enhanced (the version-1 cohort's values); delayed: contrast in the bladder.
PHASE_HU = {
    "native":        (45, 35, 35, 10, 40, 55, 30, 40, 40, 40, 30, 30, 35, 5, 40),
    "arterial":      (125, 170, 170, 10, 50, 70, 40, 280, 90, 110, 70, 70, 50, 5, 60),
    "portal_venous": (110, 160, 160, 10, 40, 100, 30, 170, 140, 85, 55, 55, 35, 5, 45),
    "delayed":       (80, 120, 120, 10, 40, 80, 30, 110, 105, 70, 50, 50, 35, 200, 45),
}
PHASE_SHARE = {"native": 0.2, "arterial": 0.2, "portal_venous": 0.45, "delayed": 0.15}
# MRI-like subjects (AMOS has 100 MRI of 600 scans): a T1-weighted-like contrast written on the same
# stored scale (the dataset's window maps it to [0, 1] as for CT): fat bright, fluid dark, vessels dark
# (flow void); background tissues and organs per AMOS id 1..15.
MRI_TISSUE = {"air": -120.0, "subcutaneous_fat": 240.0, "muscle": 30.0, "mesenteric_fat": 220.0,
              "bone": 40.0, "marrow": 180.0, "gas": -120.0}
MRI_ORGAN = (70, 95, 95, -60, 60, 140, 50, -80, -80, 150, 90, 90, 60, -90, 70)


@dataclass(frozen=True)
class Subject:
    """What varies between subjects of the version-2 cohort (drawn first from the subject's seed).

    ``modality``: ``ct`` or ``mri``; ``phase``: the CT contrast phase (``none`` for MRI); ``fov_z``: the
    body heights (0 pelvis .. 1 diaphragm) at the first and last slice (upper-abdomen scans start high,
    without the pelvic organs); ``body_scale``: left-right and antero-posterior habitus, which scales the
    anatomy with it; ``fat``: subcutaneous fat thickness (normalised); ``lesions``: hypodense liver
    lesions (labelled liver, as AMOS labels an organ with its lesions); ``cysts``: renal cysts;
    ``noise_hu``: noise standard deviation; ``bias_hu``: amplitude of the smooth bias field.
    """

    modality: str
    phase: str
    fov_z: tuple[float, float]
    body_scale: tuple[float, float]
    fat: float
    lesions: int
    cysts: int
    noise_hu: float
    bias_hu: float

    def record(self) -> dict[str, object]:
        return {"modality": self.modality, "phase": self.phase, "fov_z_low": round(self.fov_z[0], 3),
                "fov_z_high": round(self.fov_z[1], 3), "body_scale_x": round(self.body_scale[0], 3),
                "body_scale_y": round(self.body_scale[1], 3), "fat": round(self.fat, 3), "lesions": self.lesions,
                "cysts": self.cysts, "noise_hu": round(self.noise_hu, 1), "bias_hu": round(self.bias_hu, 1)}


class SyntheticAbdomen:
    """The synthetic abdomen generator (AMOS labels). See the module docstring.

    Version 2 draws a :class:`Subject` per case: CT contrast phase or an MRI-like contrast, field of
    view cut at different heights, body habitus, wider organ position and size spread, liver lesions
    and renal cysts, noise and bias-field levels. Version 1 (organ HU varying by about 8 HU, sizes by
    +-12 %, positions by 1.5 % of the body) let 10 labeled cases cover the cohort: the labeled-only
    lower bound came within 2 points of the fully supervised bound.

    Version 3: in a written cohort each split list holds as many MRI-like subjects as the published
    AMOS list (``mri_counts``; the labeled 5 % 3 of 10). Version 2 drew them at random (15 %): its
    labeled 5 % held none, so no method could learn the MRI-like test cases (Dice about 0 on them for
    every semi-supervised row under ``cpu-long``), where the real split labels three MRI scans.
    """

    name = "synthetic-amos"
    version = "3"  # bump when generate() changes what it draws; a new version generates a new cohort folder
    class_names = AMOS_CLASSES
    large_organs = AMOS_LARGE
    split_sizes = AMOS_SPLIT_SIZES
    labeled_counts = AMOS_LABELED
    field_of_view_mm = (350.0, 300.0, 320.0)
    paint_portal_veins = False
    mri_share = 0.15  # a subject drawn alone (generate without ``modality``); written cohorts use mri_counts
    mri_counts: dict[str, int] | None = AMOS_MRI_COUNTS
    upper_abdomen_share = 0.25
    position_jitter = 0.03
    size_range = (0.8, 1.2)

    def subject(self, seed: int, modality: str | None = None) -> Subject:
        """The subject drawn for ``seed`` (the first draws of :meth:`generate`); ``modality`` ("ct" or
        "mri") replaces the drawn one and leaves every other draw as it was."""
        return self._draw_subject(np.random.default_rng(seed), modality)

    def _draw_subject(self, rng: np.random.Generator, modality: str | None = None) -> Subject:
        if modality not in (None, "ct", "mri"):
            raise ValueError(f"modality must be 'ct' or 'mri', not {modality!r}")
        drawn_mri = rng.random() < self.mri_share
        mri = drawn_mri if modality is None else modality == "mri"
        phases = list(PHASE_SHARE)
        ct_phase = phases[int(rng.choice(len(phases), p=list(PHASE_SHARE.values())))]  # drawn for MRI too
        phase = "none" if mri else ct_phase
        upper = rng.random() < self.upper_abdomen_share
        low = rng.uniform(0.25, 0.40) if upper else rng.uniform(-0.05, 0.08)
        high = rng.uniform(0.93, 1.05)
        scale = rng.uniform(0.82, 1.12, size=2)
        return Subject("mri" if mri else "ct", phase, (float(low), float(high)), (float(scale[0]), float(scale[1])),
                       float(rng.uniform(0.02, 0.09)), int(rng.choice(4, p=[0.6, 0.2, 0.12, 0.08])),
                       int(rng.random() < 0.2), float(rng.uniform(8.0, 30.0)), float(rng.uniform(10.0, 45.0)))

    def generate(self, shape: tuple[int, int, int], seed: int,
                 modality: str | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        rng = np.random.default_rng(seed)
        subject = self._draw_subject(rng, modality)
        axes = [np.linspace(0.0, 1.0, s, dtype=np.float32) for s in shape]
        x, y, z = np.meshgrid(*axes, indexing="ij")
        sx, sy = subject.body_scale
        bx, by = 0.5 + (x - 0.5) / sx, 0.52 + (y - 0.52) / sy  # body coordinates: the anatomy scales with habitus
        bz = subject.fov_z[0] + z * (subject.fov_z[1] - subject.fov_z[0])
        noise = _smooth_noise(rng, len(ORGANS) + 2, shape)
        label = np.zeros(shape, np.uint8)
        tissue: dict[str, np.ndarray] = {}
        outer = 0.42 + subject.fat
        body = ((bx - 0.5) / outer) ** 2 + ((by - 0.52) / (outer - 0.06)) ** 2 + 0.05 * noise[-1] < 1
        inner = ((bx - 0.5) / 0.42) ** 2 + ((by - 0.52) / 0.36) ** 2 + 0.05 * noise[-1] < 1
        muscle = inner & ~(((bx - 0.5) / 0.38) ** 2 + ((by - 0.45) / 0.30) ** 2 < 1)
        spine = ((bx - 0.5) / 0.065) ** 2 + ((by - 0.80) / 0.06) ** 2 < 1
        cortex = spine & ~(((bx - 0.5) / 0.05) ** 2 + ((by - 0.80) / 0.045) ** 2 < 1)
        tissue.update(subcutaneous_fat=body & ~inner, muscle=muscle, mesenteric_fat=inner & ~muscle,
                      marrow=spine & ~cortex, bone=cortex)
        organ_hu = PHASE_HU.get(subject.phase, PHASE_HU["portal_venous"])
        hu = np.full(shape, -1000.0, np.float32)
        mri = subject.modality == "mri"
        ct_tissue = {"subcutaneous_fat": -100.0, "muscle": 50.0, "mesenteric_fat": -80.0, "marrow": 400.0, "bone": 700.0}
        for name, mask in tissue.items():
            hu[mask] = MRI_TISSUE[name] if mri else ct_tissue[name]
        if mri:
            hu[~body] = MRI_TISSUE["air"]
        hu[tissue["mesenteric_fat"]] += 20.0 * noise[-2][tissue["mesenteric_fat"]]
        for i, organ in enumerate(ORGANS):
            jitter = rng.normal(0.0, self.position_jitter, size=3)
            size = rng.uniform(*self.size_range) * rng.uniform(0.92, 1.08, size=3) * np.array(organ.radii)
            cx, cy, cz = np.array(organ.centre) + jitter
            mask = self._shape(organ, bx, by, bz, (cx, cy, cz), size, 0.18 * noise[i]) & inner & ~spine & (label == 0)
            label[mask] = organ.label
            base = MRI_ORGAN[organ.label - 1] if mri else organ_hu[organ.label - 1]
            hu[mask] = base + rng.normal(0.0, 12.0)
            if organ.label in (7, 13):  # gas in the stomach and duodenum, anterior part
                gas = mask & (noise[i] > 0.9) & (by < cy)
                hu[gas] = MRI_TISSUE["gas"] if mri else -700.0
        self._paint_lesions(rng, subject, label, hu, (bx, by, bz), mri)
        if self.paint_portal_veins:  # splenic vein behind the pancreas, joining the portal vein to the liver
            free = inner & ~spine & (label == 0)
            cz = 0.66 + rng.normal(0.0, 0.01)
            splenic = (((by - 0.60) / 0.016) ** 2 + ((bz - cz) / 0.016) ** 2 < 1) & (bx > 0.40) & (bx < 0.72)
            portal = (((bx - 0.40) / 0.018) ** 2 + ((by - 0.58) / 0.018) ** 2 < 1) & (bz > cz) & (bz < cz + 0.10)
            veins = (splenic | portal) & free
            label[veins] = PORTAL_SPLENIC_VEINS
            hu[veins] = -70.0 if mri else 150.0
        hu = ndimage.gaussian_filter(hu, 0.6)
        hu += subject.bias_hu * noise[-1] + rng.normal(0.0, subject.noise_hu, size=shape).astype(np.float32)
        fov = (self.field_of_view_mm[0], self.field_of_view_mm[1],
               self.field_of_view_mm[2] * (subject.fov_z[1] - subject.fov_z[0]))
        spacing = tuple(float(f / s) for f, s in zip(fov, shape))
        return np.clip(hu, -1024, 3000).astype(np.int16), self.relabel(label), spacing

    @staticmethod
    def _paint_lesions(rng: np.random.Generator, subject: Subject, label: np.ndarray, hu: np.ndarray,
                       coords: tuple[np.ndarray, ...], mri: bool) -> None:
        """Hypodense liver lesions and water-density renal cysts, inside their organ (its label kept)."""
        bx, by, bz = coords
        for organ_ids, count, offset in (((6,), subject.lesions, -45.0), ((2, 3), subject.cysts, None)):
            for _ in range(count):
                organ = organ_ids[int(rng.integers(len(organ_ids)))]
                where = np.argwhere(label == organ)
                radius = rng.uniform(0.015, 0.04)
                if not len(where):
                    continue
                centre = where[int(rng.integers(len(where)))]
                c = [axis[tuple(centre)] for axis in coords]
                sphere = ((bx - c[0]) ** 2 + (by - c[1]) ** 2 + (bz - c[2]) ** 2 < radius ** 2) & (label == organ)
                if offset is None:  # a cyst: water
                    hu[sphere] = -70.0 if mri else 5.0
                else:
                    hu[sphere] += -0.5 * abs(offset) if mri else offset

    def relabel(self, label: np.ndarray) -> np.ndarray:
        """Internal (AMOS) ids -> this label set's ids."""
        return label

    @staticmethod
    def _shape(organ: Organ, x: np.ndarray, y: np.ndarray, z: np.ndarray, c: tuple[float, float, float],
               r: np.ndarray, noise: np.ndarray) -> np.ndarray:
        cx, cy, cz = c
        if organ.kind == "ellipsoid":
            return ((x - cx) / r[0]) ** 2 + ((y - cy) / r[1]) ** 2 + ((z - cz) / r[2]) ** 2 + noise < 1
        if organ.kind == "tube":  # vertical vessel with a gentle curve
            lo, hi = organ.z_range
            bend = 0.02 * np.sin(3.0 * z + cx * 10)
            return (((x - cx - bend) / r[0]) ** 2 + ((y - cy) / r[1]) ** 2 + 0.5 * noise < 1) & (z >= lo) & (z <= hi)
        if organ.kind == "cloop":  # C-shaped loop in the coronal plane, open towards the patient's left
            rho = np.sqrt((x - cx) ** 2 + (z - cz) ** 2)
            angle = np.arctan2(z - cz, x - cx)
            ring = ((rho - r[0]) / r[2]) ** 2 + ((y - cy) / r[1]) ** 2 + 0.5 * noise < 1
            return ring & (np.abs(angle) > 0.7)
        if organ.kind == "jshape":  # fundus high on the left, body sweeping down and to the right
            parts = [((0.04, 0.02, 0.07), 1.0), ((0.0, 0.0, 0.0), 0.9), ((-0.07, -0.03, -0.08), 0.75),
                     ((-0.13, -0.02, -0.12), 0.55)]
            out = np.zeros(x.shape, bool)
            for (dx, dy, dz), s in parts:
                out |= ((x - cx - dx) / (r[0] * s)) ** 2 + ((y - cy - dy) / (r[1] * s)) ** 2 + \
                       ((z - cz - dz) / (r[2] * s)) ** 2 + noise < 1
            return out
        raise ValueError(f"unknown organ kind {organ.kind!r}")


class SyntheticSynapse(SyntheticAbdomen):
    """The same anatomy with the Synapse/BTCV label set (13 organs incl. portal & splenic veins) and
    the Synapse split sizes (20 / 4 / 6)."""

    name = "synthetic-synapse"
    version = "2"  # its volumes and splits are those of version 2 (no MRI-like subjects to place)
    mri_share = 0.0  # BTCV: portal-venous CT only
    mri_counts = None
    class_names = SYNAPSE_CLASSES
    large_organs = SYNAPSE_LARGE
    split_sizes = SYNAPSE_SPLIT_SIZES
    labeled_counts = SYNAPSE_LABELED
    paint_portal_veins = True

    def relabel(self, label: np.ndarray) -> np.ndarray:
        lut = np.zeros(PORTAL_SPLENIC_VEINS + 1, np.uint8)
        for source, target in AMOS_TO_SYNAPSE.items():
            lut[source] = target
        return lut[label]


def _write_nifti(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # x -> patient left, y -> posterior (LPS)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def write_cohort(generator: CohortGenerator, root: str | Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """Generate the whole cohort into ``root`` atomically (a temporary folder renamed at the end).

    An existing complete cohort (``root/dataset.json`` present) is left untouched and returned.
    """
    root = Path(root)
    if (root / "dataset.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for sub in ("imagesTr", "labelsTr", "splits"):
            (tmp / sub).mkdir()
        splits = synthetic_split_ids(generator.split_sizes, generator.labeled_counts)
        all_ids = splits["train"] + splits["eval"] + splits["test"]
        mri_counts = getattr(generator, "mri_counts", None)
        plan = modality_plan(splits, mri_counts, seed) if mri_counts else {}
        subjects: list[dict[str, object]] = []
        for index, case_id in enumerate(all_ids):
            subject_seed = seed * 100_000 + index
            chosen = {"modality": plan[case_id]} if plan else {}
            image, label, spacing = generator.generate(shape, subject_seed, **chosen)
            if hasattr(generator, "subject"):
                subjects.append({"case": case_id, **generator.subject(subject_seed, **chosen).record()})
            _write_nifti(image, spacing, tmp / "imagesTr" / f"{case_id}_0000.nii.gz")
            _write_nifti(label, spacing, tmp / "labelsTr" / f"{case_id}.nii.gz")
        sums = []
        for name, ids in splits.items():
            path = tmp / "splits" / f"{name}.txt"
            path.write_text("\n".join(ids) + "\n")
            sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
        (tmp / "splits" / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        meta = {"name": generator.name, "synthetic": True,
                "description": "SYNTHETIC abdominal CT cohort generated by organbench; not real patient data.",
                "generator": type(generator).__name__, "generator_version": generator.version,
                "shape": list(shape), "seed": seed,
                "channel_names": {"0": "CT"}, "labels": {n: i for i, n in enumerate(generator.class_names)},
                "large_organs": list(generator.large_organs), "intensity_window": [-125.0, 275.0],
                "numTraining": len(all_ids), "file_ending": ".nii.gz"}
        if subjects:  # what each synthetic subject drew (modality, phase, field of view, ...)
            columns = list(subjects[0])
            rows = [",".join(str(row[c]) for c in columns) for row in subjects]
            (tmp / "subjects.csv").write_text(",".join(columns) + "\n" + "\n".join(rows) + "\n")
            meta["modalities"] = {m: sum(r["modality"] == m for r in subjects) for m in ("ct", "mri")}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
