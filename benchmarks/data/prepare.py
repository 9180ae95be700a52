"""Converting real AMOS22 / Synapse releases into the harness layout, under a named protocol.

Protocols (docs/algorithms.md §2.2):

``ga``  GA/TAK: CT window [-125, 275] HU, fixed scaling ``(x + 125) / 400``; volumes resampled to
        (x, y, z) = (160, 160, 80) (the grid of their evaluation), trilinear for images, nearest for labels.
``dhc`` DHC: every volume resized to (160, 160, 80) in (x, y, z) (= (80, 160, 160) in their z, y, x order),
        window [-75, 275] HU, per-volume min-max scaling.

Synapse (docs/algorithms.md §2.3): ``dhc`` (current DHC code: in-plane x0.5, depth kept, [-75, 275] min-max) and
``resize`` (A&D: every volume to (160, 160, 80), same intensity rule).

Both reorient to the harness convention (array axes toward patient left, posterior, superior: LPS).
MRI cases (AMOS ids >= 500) are converted like CT, as the references do, and listed in
``dataset.json``. Each converted case is written atomically (temporary file then rename), so an
interrupted ``prepare`` never leaves a half-written case; finished cases are not converted again.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.data.nifti import read_nifti
from benchmarks.errors import DatasetError

PROTOCOLS = {  # dataset -> protocol -> target grid (fixed shape, or a per-axis scale) and intensity rule
    "amos": {
        "ga": {"shape": (160, 160, 80), "window": [-125.0, 275.0], "norm": "fixed"},
        "dhc": {"shape": (160, 160, 80), "window": [-75.0, 275.0], "norm": "minmax"},
    },
    "synapse": {
        "dhc": {"scale": (0.5, 0.5, 1.0), "window": [-75.0, 275.0], "norm": "minmax"},
        "resize": {"shape": (160, 160, 80), "window": [-75.0, 275.0], "norm": "minmax"},
    },
}
TARGET_AXES = ("L", "P", "S")


def to_lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Reorient a NIfTI image to the harness axes (patient left, posterior, superior)."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(TARGET_AXES))
    return img.as_reoriented(ornt)


def read_label_map_lps(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A label NIfTI reoriented to the harness axes (as :func:`prepare_case` does): ``(int64 array
    (x, y, z), spacing mm)``; a :class:`DatasetError` names the file otherwise."""
    data, affine, _ = read_nifti(Path(path))
    img = to_lps(nib.Nifti1Image(np.asarray(data), affine))
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.asarray(img.dataobj).astype(np.int64), spacing  # type: ignore[return-value]


def resample_case(image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...],
                  shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Resize to ``shape``: trilinear (align_corners=False) for HU, nearest for labels; new spacing."""
    img = torch.from_numpy(image.astype(np.float32))[None, None]
    lab = torch.from_numpy(label.astype(np.float32))[None, None]
    img = F.interpolate(img, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    lab = F.interpolate(lab, size=shape, mode="nearest")[0, 0].numpy()
    new_spacing = tuple(s * n / m for s, n, m in zip(spacing, image.shape, shape))
    return np.rint(img).astype(np.int16), lab.astype(np.uint8), new_spacing


def protocol_spec(dataset: str, protocol: str) -> dict:
    """The target grid and intensity rule of ``protocol`` for ``dataset`` (errors list the known ones)."""
    if dataset not in PROTOCOLS:
        raise DatasetError(f"no preprocessing protocols for dataset {dataset!r}; known: {sorted(PROTOCOLS)}")
    if protocol not in PROTOCOLS[dataset]:
        raise DatasetError(f"unknown {dataset} preprocessing protocol {protocol!r}; known: {sorted(PROTOCOLS[dataset])}")
    return PROTOCOLS[dataset][protocol]


def check_label_values(label: np.ndarray, path: Path, num_classes: int | None) -> None:
    """A :class:`DatasetError` naming ``path`` and the values when ``label`` holds a negative value or,
    with ``num_classes``, a value outside ``0 .. num_classes - 1`` (before any cast to uint8, which
    would silently turn 256 into background).

    >>> check_label_values(np.array([0, 3]), Path("l.nii.gz"), 4)
    >>> check_label_values(np.array([0, 256, -1]), Path("l.nii.gz"), 16)
    Traceback (most recent call last):
    methods.common.errors.DatasetError: l.nii.gz: label values [-1, 256] outside the class map 0..15
    """
    values = np.unique(label)
    bad = values[values < 0] if num_classes is None else values[(values < 0) | (values >= num_classes)]
    if bad.size:
        shown = bad[:10].tolist() + (["..."] if bad.size > 10 else [])
        scope = "negative label values" if num_classes is None else "label values"
        limit = "" if num_classes is None else f" outside the class map 0..{num_classes - 1}"
        raise DatasetError(f"{path}: {scope} {shown}{limit}")


def prepare_case(image_path: Path, label_path: Path, protocol: str, dataset: str = "amos",
                 label_map: dict[int, int] | None = None, num_classes: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Load one real case, reorient, remap labels (``label_map``: source id -> target id, others 0)
    and resample it under ``protocol``. Returns ``(HU int16, label uint8, spacing)``.

    Label values are checked first: negative ones are refused, and without a ``label_map`` so is any
    value outside ``0 .. num_classes - 1`` (when given)."""
    spec = protocol_spec(dataset, protocol)
    # one read per file: validated arrays, wrapped again only to reuse nibabel's reorientation
    image_img = to_lps(nib.Nifti1Image(*read_nifti(image_path)[:2]))
    label_img = to_lps(nib.Nifti1Image(*read_nifti(label_path)[:2]))
    image, label = np.asarray(image_img.dataobj), np.asarray(label_img.dataobj).astype(np.int64)
    if image.shape != label.shape:
        raise DatasetError(f"{label_path}: shape {label.shape} differs from image {image_path} {image.shape}")
    check_label_values(label, label_path, None if label_map is not None else num_classes)
    if label_map is not None:
        lut = np.zeros(int(label.max()) + 1, np.int64)
        for source, target in label_map.items():
            if source < len(lut):
                lut[source] = target
        label = lut[label]
    spacing = tuple(float(z) for z in image_img.header.get_zooms()[:3])
    shape = spec.get("shape") or tuple(max(1, round(n * f)) for n, f in zip(image.shape, spec["scale"]))
    return resample_case(image, label, spacing, shape)


def _atomic_save(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(nib.Nifti1Image(array, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])), str(tmp))
    os.replace(tmp, path)


def _find_amos(src: Path, case_id: str) -> tuple[Path, Path] | None:
    for part in ("Tr", "Va"):
        image, label = src / f"images{part}" / f"{case_id}.nii.gz", src / f"labels{part}" / f"{case_id}.nii.gz"
        if image.is_file() and label.is_file():
            return image, label
    return None


def _find_synapse(src: Path, case_id: str) -> tuple[Path, Path] | None:
    number = case_id.removeprefix("synapse_")
    for base in (src, src / "Training", src / "RawData" / "Training"):
        image, label = base / "img" / f"img{number}.nii.gz", base / "label" / f"label{number}.nii.gz"
        if image.is_file() and label.is_file():
            return image, label
    return None


FINDERS = {"amos": (_find_amos, "imagesTr/labelsTr or imagesVa/labelsVa"),
           "synapse": (_find_synapse, "img/imgNNNN.nii.gz and label/labelNNNN.nii.gz")}


def prepare_release(dataset: str, src: Path, dst: Path, definition: Path, protocol: str) -> Path:
    """Convert the release at ``src`` for every id of the shipped splits (``definition`` =
    ``datasets/<dataset>``) into ``dst``; finished cases are kept (the conversion is cached)."""
    spec = protocol_spec(dataset, protocol)
    finder, layout = FINDERS[dataset]
    src, dst = Path(src), Path(dst)
    ids = sorted({i for name in ("train", "eval", "test")
                  for i in (definition / "splits" / f"{name}.txt").read_text().split()})
    found = {case_id: finder(src, case_id) for case_id in ids}
    missing = [i for i, paths in found.items() if paths is None]
    if missing:
        raise DatasetError(f"{src}: {len(missing)} case(s) of the {dataset} splits not found ({layout}), "
                           f"e.g. {missing[:5]}")
    num_classes = len(json.loads((definition / "dataset.json").read_text())["labels"])
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for case_id, (image_path, label_path) in found.items():
        out_image, out_label = dst / "imagesTr" / f"{case_id}_0000.nii.gz", dst / "labelsTr" / f"{case_id}.nii.gz"
        if out_image.is_file() and out_label.is_file():
            continue
        image, label, spacing = prepare_case(image_path, label_path, protocol, dataset,
                                             num_classes=num_classes)
        _atomic_save(label, spacing, out_label)
        _atomic_save(image, spacing, out_image)
    shutil.copytree(definition / "splits", dst / "splits", dirs_exist_ok=True)
    meta = json.loads((definition / "dataset.json").read_text())
    meta.update({"intensity_window": spec["window"], "intensity_norm": spec["norm"], "preprocessing": protocol})
    tmp = dst / ".dataset.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, dst / "dataset.json")
    return dst


def prepare_amos(src: Path, dst: Path, definition: Path, protocol: str = "ga") -> Path:
    """:func:`prepare_release` for the AMOS22 release (imagesTr/labelsTr/imagesVa/labelsVa)."""
    return prepare_release("amos", src, dst, definition, protocol)
