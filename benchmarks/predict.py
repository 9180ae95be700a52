"""Apply a finished training to new scans, as ``nnUNetv2_predict`` does: read the NIfTI, bring it to
the grid and intensity scale the network was trained on, predict with the sliding window, and write
the label map on the input's own grid and affine.

Steps (the training's ``model/model.json`` holds every setting used):
1. reorient to the harness axes (LPS), as ``data prepare`` does;
2. resample to the dataset's grid (trilinear), clip to its intensity window and scale (fixed or min-max);
3. sliding-window softmax at the training patch and the evaluation stride, argmax;
4. labels resampled back to the reoriented shape (nearest), the reorientation undone, saved as uint8
   with the input's affine and header.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.data.nifti import DatasetInfo, normalise_intensity, read_nifti
from benchmarks.data.prepare import TARGET_AXES, to_lps
from benchmarks.inference import sliding_window_probs
from benchmarks.weights import TrainedModel
from methods.common.kernels import class_argmax


@dataclass
class Prediction:
    """What :func:`predict_file` wrote: the output path, its shape, the classes present."""

    path: Path
    shape: tuple[int, ...]
    classes: list[int]


def _resize(volume: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(tensor, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()


def intensity_rule(record: dict) -> DatasetInfo:
    """The intensity settings of the training's dataset, as the DatasetInfo that :func:`normalise_intensity` reads."""
    return DatasetInfo(Path("."), record["dataset"], tuple(record["class_names"]), (),
                       tuple(record["intensity_window"]), record["synthetic"], record["intensity_norm"])


def predict_array(model: TrainedModel, hu_lps: np.ndarray) -> np.ndarray:
    """Steps 2-4 without the reorientation: HU ``(X, Y, Z)`` in LPS -> uint8 labels of the same shape."""
    record = model.record
    grid = tuple(record["grid"])
    image = normalise_intensity(_resize(hu_lps, grid, "trilinear"), intensity_rule(record))
    tensor = torch.from_numpy(image)[None, None].to(model.method.device)
    probs = sliding_window_probs(tensor, model.method.predict, record["patch"], record["eval_stride"])
    labels = class_argmax(probs)[0].cpu().numpy().astype(np.float32)
    return _resize(labels, hu_lps.shape, "nearest").astype(np.uint8)


def predict_file(model: TrainedModel, source: Path, target: Path) -> Prediction:
    """Steps 1-4 for one NIfTI file; ``target`` is written (its folder created), never ``source``."""
    data, affine, _ = read_nifti(source)
    original = nib.Nifti1Image(np.asarray(data), affine)
    lps = to_lps(original)
    labels = predict_array(model, np.asarray(lps.dataobj, dtype=np.float32))
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(TARGET_AXES),
                                           nib.orientations.io_orientation(affine))
    labels = nib.orientations.apply_orientation(labels, back).astype(np.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    out = nib.Nifti1Image(labels, affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, str(target))
    return Prediction(target, labels.shape, sorted(int(v) for v in np.unique(labels)))
