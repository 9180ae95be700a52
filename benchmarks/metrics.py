"""Per-class Dice, surface distances (ASD, HD95, HD) and NSD under named protocols.

Functional core (:func:`dice`, :func:`surface_distances`, :func:`asd`, :func:`surface_metrics`)
plus :class:`Protocol`, which fixes the empty-mask rules, ASD direction, units and the NSD
tolerance. Protocols (docs/algorithms.md §3.2):

``dhc``  The convention of the published tables (TAK/GA ``cal_metric``, medpy-equivalent):
         Dice in %, ASD one-directional prediction -> ground truth, in voxels.

         ============================ ========= ======== ============ =======
         case                          Dice (%)  ASD      HD95 / HD    NSD (%)
         ============================ ========= ======== ============ =======
         both non-empty                100 dc    asd      hd95 / hd    nsd
         prediction empty, GT present  0         128      128          0
         GT empty, prediction present  0         128      128          0
         both empty                    100       0        0            100
         whole prediction background   0         0        0            0  (every class; the reference
                                                                            returns zeros)
         ============================ ========= ======== ============ =======

``dhc_ntimes`` DHC's ``evaluate_Ntimes`` (and A&D's ``evaluate``), bug for bug: as ``dhc`` but a
         class empty in both masks scores Dice **1 on the 0-100 scale** (docs/algorithms.md §3.2 [BUG]), and an
         all-background prediction is scored class by class (Dice 0, ASD 128 where the GT has the
         organ). A named faithful variant; ``dhc`` is the corrected default.

``native`` Spacing-aware and symmetric: Dice in %, ASD = mean of both directed surface-distance sets
         (medpy ``assd``) in mm. A class whose ground truth is empty is NaN for every metric (left
         out of every mean). A missed organ (prediction empty, GT present) scores Dice 0, NSD 0 and
         ASD / HD95 / HD = the image diagonal in mm (the largest distance possible in the volume).

HD95 and HD follow medpy: the 95th percentile / maximum of both directed distance sets together.
NSD at tolerance t is the share of both surfaces within t of the other surface,
``(|{d(S_P, S_G) <= t}| + |{d(S_G, S_P) <= t}|) / (|S_P| + |S_G|)`` in % (MONAI's
``compute_surface_dice``), in the protocol's units (``dhc``: 1 voxel; ``native``: 1 mm).

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


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None = None,
                    symmetric: bool = False, tolerance: float = 1.0) -> dict[str, float]:
    """``asd`` (one-directional or symmetric), ``hd95``, ``hd`` (medpy) and ``nsd`` (%) of two
    non-empty boolean masks, from the two directed surface-distance sets."""
    forward = surface_distances(pred, gt, spacing)
    backward = surface_distances(gt, pred, spacing)
    both = np.concatenate([forward, backward])
    return {"asd": float(both.mean() if symmetric else forward.mean()),
            "hd95": float(np.percentile(both, 95)), "hd": float(both.max()),
            "nsd": 100.0 * float((forward <= tolerance).sum() + (backward <= tolerance).sum()) / len(both)}


METRICS = ("dice", "asd", "hd95", "hd", "nsd")


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
    both_empty_dice: float = 100.0  # Dice (%) of a class absent from both masks (dhc_ntimes: 1.0, the bug)
    nsd_tolerance: float = 1.0  # in asd_units

    def tags(self) -> dict[str, str]:
        return {"protocol": self.name, "protocol_version": self.version, "asd_units": self.asd_units,
                "asd_direction": self.asd_direction, "empty_rule": self.empty_rule,
                "nsd_tolerance": f"{self.nsd_tolerance:g} {self.asd_units}", "hd95_definition": "medpy"}


PROTOCOLS: dict[str, Protocol] = {
    "dhc": Protocol("dhc", "2", "voxel", "pred_to_gt", "tak_ga_test", 128.0, False, True,
                    "TAK/GA test convention: one-directional ASD in voxels; one side empty -> Dice 0, "
                    "ASD/HD 128, NSD 0; both empty -> Dice 100, ASD/HD 0, NSD 100; all-background "
                    "prediction -> zeros."),
    "dhc_ntimes": Protocol("dhc_ntimes", "1", "voxel", "pred_to_gt", "dhc_evaluate_ntimes", 128.0, False, False,
                           "DHC evaluate_Ntimes, faithful: as dhc, but both empty -> Dice 1 on the 0-100 "
                           "scale (the reference's bug) and no all-background rule.", both_empty_dice=1.0),
    "native": Protocol("native", "2", "mm", "symmetric", "gt_empty_nan", "diagonal", True, False,
                       "Symmetric ASD in mm; GT empty -> NaN (excluded); missed organ -> Dice 0, NSD 0, "
                       "ASD/HD = image diagonal in mm; NSD at 1 mm."),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; a KeyError lists the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown metric protocol {name!r}; known: {sorted(PROTOCOLS)}") from None


def case_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int, protocol: Protocol,
                 spacing: tuple[float, ...] | None = None) -> dict[str, np.ndarray]:
    """Per-foreground-class arrays (length ``num_classes - 1``) of every metric in :data:`METRICS`.

    Args:
        pred, gt: integer label maps of the same shape.
        spacing: voxel size in mm (used only by protocols with ``asd_units == "mm"``).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    n = num_classes - 1
    out = {m: np.zeros(n) for m in METRICS}
    if protocol.all_background_zero and not pred.any():
        return out
    sampling = spacing if protocol.asd_units == "mm" else None
    if protocol.missing_asd == "diagonal":
        scale = sampling or (1.0,) * pred.ndim
        missing = math.sqrt(sum((s * sp) ** 2 for s, sp in zip(pred.shape, scale)))
    else:
        missing = float(protocol.missing_asd)
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        has_p, has_g = bool(p.any()), bool(g.any())
        row = {}
        if not has_g and protocol.gt_empty_is_nan:
            row = {m: np.nan for m in METRICS}
        elif has_p and has_g:
            row = surface_metrics(p, g, sampling, protocol.asd_direction == "symmetric", protocol.nsd_tolerance)
            row["dice"] = 100.0 * dice(p, g)
        elif has_p or has_g:
            row = {"dice": 0.0, "asd": missing, "hd95": missing, "hd": missing, "nsd": 0.0}
        else:
            row = {"dice": protocol.both_empty_dice, "asd": 0.0, "hd95": 0.0, "hd": 0.0, "nsd": 100.0}
        for metric, value in row.items():
            out[metric][c - 1] = value
    return out


def evaluate_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, protocol: Protocol,
                  spacing: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-foreground-class ``(dice %, asd)`` arrays of length ``num_classes - 1`` for one case
    (see :func:`case_metrics` for every metric)."""
    metrics = case_metrics(pred, gt, num_classes, protocol, spacing)
    return metrics["dice"], metrics["asd"]
