"""Per-class Dice and average surface distance under named protocols.

Functional core (:func:`dice`, :func:`surface_distances`, :func:`asd`) plus :class:`Protocol`, which
fixes the empty-mask rules, ASD direction and units. Two protocols (spec 3.2):

``dhc``  The convention of the published tables (TAK/GA ``cal_metric``, medpy-equivalent):
         Dice in %, ASD one-directional prediction -> ground truth, in voxels.

         ============================ ========= ========
         case                          Dice (%)  ASD
         ============================ ========= ========
         both non-empty                100 dc    asd
         prediction empty, GT present  0         128
         GT empty, prediction present  0         128
         both empty                    100       0
         whole prediction background   0         0  (every class; the reference returns zeros)
         ============================ ========= ========

``native`` Spacing-aware and symmetric: Dice in %, ASD = mean of both directed surface-distance sets
         (medpy ``assd``) in mm. A class whose ground truth is empty is NaN for both metrics (left
         out of every mean). A missed organ (prediction empty, GT present) scores Dice 0 and ASD =
         the image diagonal in mm (the largest distance possible in the volume).

>>> import numpy as np
>>> gt = np.zeros((8, 8, 8), bool); gt[2:6, 2:6, 2:6] = True
>>> round(dice(gt, gt), 3), round(asd(gt, gt), 3)
(1.0, 0.0)
>>> evaluate_case(np.zeros((8, 8, 8), int), gt.astype(int), 2, PROTOCOLS["dhc"])
(array([0.]), array([0.]))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """``2|P & G| / (|P| + |G|)`` for boolean masks; NaN when both are empty."""
    denom = int(pred.sum()) + int(gt.sum())
    return float("nan") if denom == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / denom


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by one voxel (clipped at the array border)."""
    slices = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        slices.append(slice(max(hits[0] - 1, 0), hits[-1] + 2))
    return tuple(slices)


def surface_distances(source: np.ndarray, target: np.ndarray,
                      spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Distances from every surface voxel of ``source`` to the nearest surface voxel of ``target``.

    Surface = mask XOR its erosion with the 6-connected structuring element (medpy's definition);
    distances are Euclidean, in mm when ``spacing`` is given, else in voxels. Both masks non-empty.
    """
    crop = _bbox(source | target)  # exact: erosion and EDT are unaffected outside this box
    source, target = source[crop], target[crop]
    structure = ndimage.generate_binary_structure(source.ndim, 1)
    source_border = source ^ ndimage.binary_erosion(source, structure, iterations=1)
    target_border = target ^ ndimage.binary_erosion(target, structure, iterations=1)
    dt = ndimage.distance_transform_edt(~target_border, sampling=spacing)
    return dt[source_border]


def asd(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None = None,
        symmetric: bool = False) -> float:
    """Average surface distance; ``symmetric=False`` is medpy ``asd`` (pred -> gt), ``True`` medpy ``assd``."""
    d = surface_distances(pred, gt, spacing)
    if symmetric:
        d = np.concatenate([d, surface_distances(gt, pred, spacing)])
    return float(d.mean())


@dataclass(frozen=True)
class Protocol:
    """A named metric protocol; every field is recorded on the run."""

    name: str
    version: str
    asd_units: Literal["voxel", "mm"]
    asd_direction: Literal["pred_to_gt", "symmetric"]
    empty_rule: str
    missing_asd: float | Literal["diagonal"]
    gt_empty_is_nan: bool
    all_background_zero: bool
    description: str

    def tags(self) -> dict[str, str]:
        return {"protocol": self.name, "protocol_version": self.version, "asd_units": self.asd_units,
                "asd_direction": self.asd_direction, "empty_rule": self.empty_rule}


PROTOCOLS: dict[str, Protocol] = {
    "dhc": Protocol("dhc", "1", "voxel", "pred_to_gt", "tak_ga_test", 128.0, False, True,
                    "TAK/GA test convention: one-directional ASD in voxels; one side empty -> Dice 0, "
                    "ASD 128; both empty -> Dice 100, ASD 0; all-background prediction -> zeros."),
    "native": Protocol("native", "1", "mm", "symmetric", "gt_empty_nan", "diagonal", True, False,
                       "Symmetric ASD in mm; GT empty -> NaN (excluded); missed organ -> Dice 0, "
                       "ASD = image diagonal in mm."),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; a KeyError lists the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown metric protocol {name!r}; known: {sorted(PROTOCOLS)}") from None


def evaluate_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, protocol: Protocol,
                  spacing: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-foreground-class ``(dice %, asd)`` arrays of length ``num_classes - 1`` for one case.

    Args:
        pred, gt: integer label maps of the same shape.
        spacing: voxel size in mm (used only by protocols with ``asd_units == "mm"``).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    n = num_classes - 1
    dices, asds = np.zeros(n), np.zeros(n)
    if protocol.all_background_zero and not pred.any():
        return dices, asds
    sampling = spacing if protocol.asd_units == "mm" else None
    if protocol.missing_asd == "diagonal":
        scale = sampling or (1.0,) * pred.ndim
        missing = math.sqrt(sum((s * sp) ** 2 for s, sp in zip(pred.shape, scale)))
    else:
        missing = float(protocol.missing_asd)
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        has_p, has_g = bool(p.any()), bool(g.any())
        if not has_g and protocol.gt_empty_is_nan:
            dices[c - 1] = asds[c - 1] = np.nan
        elif has_p and has_g:
            dices[c - 1] = 100.0 * dice(p, g)
            asds[c - 1] = asd(p, g, sampling, symmetric=protocol.asd_direction == "symmetric")
        elif has_p or has_g:
            dices[c - 1], asds[c - 1] = 0.0, missing
        else:
            dices[c - 1], asds[c - 1] = 100.0, 0.0
    return dices, asds
