"""Reading a dataset folder with validation that names the file and the problem.

Layout (nnU-Net-like)::

    ROOT/dataset.json                 class map, large-organ group, intensity window, synthetic flag
    ROOT/imagesTr/<case>_0000.nii.gz  CT in HU
    ROOT/labelsTr/<case>.nii.gz       class ids 0..C-1
    ROOT/splits/<name>.txt            one case id per line
    ROOT/splits/SHA256SUMS            checksums of the split files (verified when present)

Arrays keep nibabel's voxel order ``(x, y, z)``; spacing is in mm.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.errors import DatasetError


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset definition (``dataset.json``) and its root folder."""

    root: Path
    name: str
    class_names: tuple[str, ...]
    large_organs: tuple[str, ...]
    intensity_window: tuple[float, float]
    synthetic: bool
    intensity_norm: str = "fixed"
    mri_cases: tuple[str, ...] = ()
    preprocessing: str = ""  # the ``data prepare`` protocol of a real release ("" when not recorded)
    generator_version: str = ""  # the synthetic generator's version ("" for real data)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.class_names)

    @property
    def organs(self) -> tuple[str, ...]:
        """Foreground class names, in label order."""
        return self.class_names[1:]

    def image_path(self, case_id: str) -> Path:
        return self.root / "imagesTr" / f"{case_id}_0000.nii.gz"

    def label_path(self, case_id: str) -> Path:
        return self.root / "labelsTr" / f"{case_id}.nii.gz"


@dataclass
class Case:
    """One volume: ``image`` float32 in [0, 1] (windowed), ``label`` uint8, both ``(X, Y, Z)``."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]


def load_dataset(root: str | Path) -> DatasetInfo:
    """Read and check ``ROOT/dataset.json``."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.json not found (is {root} a prepared dataset folder?)")
    try:
        meta = json.loads(path.read_text())
        labels: dict[str, int] = meta["labels"]
        ids = sorted(labels.values())
        if ids != list(range(len(ids))) or labels.get("background") != 0:
            raise DatasetError(f"{path}: labels must map background to 0 and use consecutive ids, got {labels}")
        names = tuple(sorted(labels, key=labels.__getitem__))
        large = tuple(meta.get("large_organs", ()))
        unknown = [o for o in large if o not in labels]
        if unknown:
            raise DatasetError(f"{path}: large_organs names unknown classes {unknown}")
        window = tuple(float(v) for v in meta.get("intensity_window", (-125.0, 275.0)))
        if len(window) != 2 or not all(math.isfinite(v) for v in window) or not window[0] < window[1]:
            raise DatasetError(f"{path}: intensity_window must be [low, high] with finite low < high, got "
                               f"{list(window)} (a window of zero width trains on constant images)")
        norm = meta.get("intensity_norm", "fixed")
        if norm not in ("fixed", "minmax"):
            raise DatasetError(f"{path}: intensity_norm must be 'fixed' or 'minmax', got {norm!r}")
        return DatasetInfo(root, meta["name"], names, large, window, bool(meta.get("synthetic", False)), norm,
                           tuple(meta.get("mri_cases", ())), str(meta.get("preprocessing", "")),
                           str(meta.get("generator_version", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: malformed dataset.json ({type(exc).__name__}: {exc})") from exc


def split_name(labeled_ratio: float, part: str, variant: str = "") -> str:
    """``split_name(0.05, "labeled") == "labeled_5p"`` (the DHC file naming); a variant is appended
    (``split_name(0.2, "unlabeled", "corrected") == "unlabeled_20p_corrected"``)."""
    percent = labeled_ratio * 100
    if abs(percent - round(percent)) > 1e-6:
        raise DatasetError(f"labeled_ratio {labeled_ratio} is not a whole percentage")
    return f"{part}_{round(percent)}p" + (f"_{variant}" if variant else "")


def _verify_checksum(info: DatasetInfo, path: Path) -> None:
    sums = info.root / "splits" / "SHA256SUMS"
    if not sums.is_file():
        return
    expected = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    if path.name not in expected:
        raise DatasetError(f"{path}: not listed in {sums}")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected[path.name]:
        raise DatasetError(f"{path}: checksum mismatch with {sums} (file edited or corrupt)")


def read_split(info: DatasetInfo, name: str, check_files: bool = True) -> list[str]:
    """Case ids of split ``name``; errors name the split file and the offending id."""
    path = info.root / "splits" / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (info.root / "splits").glob("*.txt"))
        raise DatasetError(f"{path}: split {name!r} not found; available: {available}")
    _verify_checksum(info, path)
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    seen: set[str] = set()
    for case_id in ids:
        if case_id in seen:
            raise DatasetError(f"{path}: case {case_id!r} listed twice")
        seen.add(case_id)
        if check_files:
            for p in (info.image_path(case_id), info.label_path(case_id)):
                if not p.is_file():
                    raise DatasetError(f"{path}: case {case_id!r} has no file {p}")
    return ids


def check_splits(info: DatasetInfo, splits: dict[str, list[str]], labeled: str, unlabeled: str) -> None:
    """Labeled and unlabeled subsets must be disjoint parts of ``train``, and ``test`` must not
    overlap ``train``; errors name the split files and a few offending ids."""
    where = info.root / "splits"
    both = sorted(set(splits[labeled]) & set(splits[unlabeled]))
    if both:
        raise DatasetError(f"{where}/{labeled}.txt and {unlabeled}.txt share {len(both)} id(s), e.g. {both[:3]}")
    for name in (labeled, unlabeled):
        outside = sorted(set(splits[name]) - set(splits["train"]))
        if outside:
            hint = ""
            if name.endswith("_20p") and info.name == "amos":
                hint = (" This is a known defect of the published AMOS 20% split (its 20p lists come from another "
                        "train list; 17 unlabeled ids are eval cases). Set `split_variant: corrected` in the study "
                        "to use labeled_20p_corrected / unlabeled_20p_corrected (named, documented in "
                        "datasets/amos/README.md).")
            raise DatasetError(f"{where}/{name}.txt: {len(outside)} id(s) not in train.txt, e.g. {outside[:3]}.{hint}")
    leak = sorted(set(splits.get("test", [])) & set(splits["train"]))
    if leak:
        raise DatasetError(f"{where}/test.txt shares {len(leak)} id(s) with train.txt, e.g. {leak[:3]}")


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``(data, affine, spacing mm)`` of a 3-D NIfTI; a :class:`DatasetError` names the file otherwise."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise DatasetError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, img.affine, spacing  # type: ignore[return-value]


class _CaseCache:
    """Decoded cases shared by every reader in this process (a launch reads the whole cohort; the tests
    and the Python API run many launches in one process), least recently used first out beyond
    ``max_bytes``. Keyed by what decoding depends on: both files' identity and modification time and
    the dataset definition's window, rule and class count."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self.cases: OrderedDict[tuple, Case] = OrderedDict()

    def get(self, key: tuple) -> Case | None:
        case = self.cases.get(key)
        if case is not None:
            self.cases.move_to_end(key)
        return case

    def put(self, key: tuple, case: Case) -> None:
        case.image.flags.writeable = case.label.flags.writeable = False  # shared: nobody may change it
        self.cases[key] = case
        self.nbytes += case.image.nbytes + case.label.nbytes
        while self.nbytes > self.max_bytes and len(self.cases) > 1:
            _, old = self.cases.popitem(last=False)
            self.nbytes -= old.image.nbytes + old.label.nbytes


_CASES = _CaseCache()


def _file_stamp(path: Path) -> tuple[int, int, int, int]:
    """``(device, inode, size, mtime ns)``: a rewritten file, even of the same size, gets another stamp."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_case(info: DatasetInfo, case_id: str) -> Case:
    """Load, check and window one case (image clipped to the window then scaled to [0, 1]).

    Decoded cases are kept per process (:class:`_CaseCache`, 1 GiB); their arrays are read-only."""
    image_path, label_path = info.image_path(case_id), info.label_path(case_id)
    try:
        key = (str(image_path), _file_stamp(image_path), str(label_path), _file_stamp(label_path),
               info.intensity_window, info.intensity_norm, info.num_classes)
    except OSError:
        return _decode_case(info, case_id)  # read_nifti names the missing file
    case = _CASES.get(key)
    if case is None:
        case = _decode_case(info, case_id)
        _CASES.put(key, case)
    return case


def _decode_case(info: DatasetInfo, case_id: str) -> Case:
    image_path, label_path = info.image_path(case_id), info.label_path(case_id)
    image, affine, spacing = read_nifti(image_path)
    label, label_affine, _ = read_nifti(label_path)
    if image.shape != label.shape:
        raise DatasetError(f"{label_path}: shape {label.shape} differs from image {image_path} {image.shape}")
    if not np.allclose(affine, label_affine, atol=1e-3):
        raise DatasetError(f"{label_path}: affine differs from image {image_path}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise DatasetError(f"{image_path}: image has NaN or infinite voxels")
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.mod(label, 1) == 0):
            raise DatasetError(f"{label_path}: label map has non-integer values")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= info.num_classes)]
    if bad.size:
        raise DatasetError(f"{label_path}: label values {bad.tolist()} outside the class map 0..{info.num_classes - 1}")
    if values.max(initial=0) == 0:
        raise DatasetError(f"{label_path}: the label map is empty (no organ voxel)")
    return Case(case_id, normalise_intensity(image, info), label.astype(np.uint8), spacing)


def normalise_intensity(hu: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Clip to the dataset's window, then scale to [0, 1]: fixed ``(x - lo) / (hi - lo)`` (GA/TAK) or
    per-volume min-max (DHC)."""
    lo, hi = info.intensity_window
    clipped = np.clip(hu.astype(np.float32), lo, hi)
    if info.intensity_norm == "minmax":
        span = float(clipped.max() - clipped.min())
        return (clipped - clipped.min()) / span if span > 0 else np.zeros_like(clipped)
    return (clipped - lo) / (hi - lo)
