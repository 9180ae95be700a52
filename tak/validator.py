"""Measuring knowledge claims on label maps (agent 2 of the TAK generator, and ``python -m benchmarks tak validate``).

Label maps must be in the harness orientation (``benchmarks.data.nifti.read_label_map_lps``): array axes
``(x, y, z)`` point towards the patient's **left**, **posterior** and **superior**; spacings are in mm.
So ``a left_of b`` holds when ``centroid_x(a) - centroid_x(b) > DIRECTION_MARGIN_MM``, ``right_of``
when it is below ``-DIRECTION_MARGIN_MM``, and likewise for y (posterior/anterior) and z
(superior/inferior).

Per-volume measurements (``measured`` is the per-volume value, aggregated as the median):

=============  ===========================================================  ===============================
relation       measured value                                               holds when
=============  ===========================================================  ===============================
directional    centroid offset (mm) towards the claimed side                > DIRECTION_MARGIN_MM (2 mm)
adjacent_to    minimum centre-to-centre distance between the voxels (mm)    <= ADJACENT_MM (10 mm)
surrounds      share of the object's voxels inside the subject's hull       >= SURROUNDS_SHARE (0.5)
elongated      largest / middle principal axis length (voxel covariance)    >= ELONGATED_RATIO (1.5)
tubular        principal length / equivalent cross-section diameter         >= TUBULAR_ASPECT (3) and elongated
compact        convex-hull volume ratio (:func:`convex_hull_ratio`)         <= COMPACT_HULL (1.6)
curved         convex-hull volume ratio                                     >= CURVED_HULL (1.8)
larger_than    subject volume / object volume                               > 1
smaller_than   subject volume / object volume                               < 1
=============  ===========================================================  ===============================

``compact`` means convex and solid (no concavity, branch or bend); it says nothing about
elongation, which is its own claim (a gallbladder is compact and may be elongated). Hull ratios of
voxel corners grow at coarse or anisotropic spacing, hence the generous thresholds.

A claim's support is the share of the volumes where its organs are present in which it holds;
it is supported when that share is >= 0.5 and not measurable (``None``) when no volume has them.

>>> lab = np.zeros((12, 4, 4), np.uint8); lab[1:4, 1:3, 1:3] = 1; lab[8:11, 1:3, 1:3] = 2
>>> r = validate_claims([Claim("b", "left_of", "a")], [lab], [(2.0, 2.0, 2.0)], {"a": 1, "b": 2})[0]
>>> r.supported, r.measured
(True, 14.0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from tak.knowledge import Claim, KnowledgeBase, check_claim

DIRECTION_MARGIN_MM = 2.0
ADJACENT_MM = 10.0
SURROUNDS_SHARE = 0.5
ELONGATED_RATIO = 1.5
TUBULAR_ASPECT = 3.0
COMPACT_HULL = 1.6
CURVED_HULL = 1.8
SUPPORT_SHARE = 0.5


def _corner_points(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Unique corner coordinates (mm) of the mask's surface voxels."""
    surface = mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
    centres = np.argwhere(surface).astype(np.float64)
    offsets = np.array([[dx, dy, dz] for dx in (-.5, .5) for dy in (-.5, .5) for dz in (-.5, .5)])
    corners = (centres[:, None, :] + offsets[None]).reshape(-1, 3)
    return np.unique(corners, axis=0) * np.asarray(spacing, dtype=np.float64)


def convex_hull_ratio(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Convex hull volume of the voxel corners / voxel volume of ``mask`` (NaN if empty).

    >>> cube = np.zeros((6, 6, 6), bool); cube[1:4, 1:4, 1:4] = True
    >>> round(convex_hull_ratio(cube), 6)
    1.0
    """
    if not mask.any():
        return float("nan")
    volume = float(mask.sum()) * float(np.prod(spacing))
    try:
        return ConvexHull(_corner_points(mask, spacing)).volume / volume
    except QhullError:  # flat masks cannot have a 3-D hull
        return 1.0

# relation -> (axis, sign): the subject lies on the +sign side of the object along that array axis
DIRECTIONS = {"left_of": (0, 1.0), "right_of": (0, -1.0), "posterior_to": (1, 1.0), "anterior_to": (1, -1.0),
              "superior_to": (2, 1.0), "inferior_to": (2, -1.0)}
UNITS = {**{r: "mm offset" for r in DIRECTIONS}, "adjacent_to": "mm gap", "surrounds": "share inside hull",
         "elongated": "axis ratio", "tubular": "length/diameter", "compact": "hull ratio", "curved": "hull ratio",
         "larger_than": "volume ratio", "smaller_than": "volume ratio"}


@dataclass
class ClaimResult:
    """Outcome of one claim over a set of label maps.

    ``n_volumes``: volumes in which the claim's organs are present; ``support_share``: share of those
    in which it holds (NaN when none); ``measured``: median per-volume value in the unit of
    :data:`UNITS` (NaN when none); ``supported``: ``support_share >= 0.5`` or ``None`` (not measurable).
    """

    claim: Claim
    n_volumes: int
    support_share: float
    measured: float
    supported: bool | None
    detail: str


class _Volume:
    """One label map with cached per-organ measurements (all in mm)."""

    def __init__(self, label: np.ndarray, spacing: Sequence[float], label_index: dict[str, int]) -> None:
        self.label = np.asarray(label)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.index = label_index
        self._cache: dict[tuple[str, str], Any] = {}
        present = np.unique(self.label)
        self.present = {name for name, i in label_index.items() if i in present and name != "background"}

    def _cached(self, kind: str, organ: str, fn: Callable[[], Any]) -> Any:
        if (kind, organ) not in self._cache:
            self._cache[(kind, organ)] = fn()
        return self._cache[(kind, organ)]

    def points(self, organ: str) -> np.ndarray:
        """Voxel indices of ``organ``, shape (n, 3)."""
        return self._cached("points", organ, lambda: np.argwhere(self.label == self.index[organ]))

    def centroid(self, organ: str) -> np.ndarray:
        return self._cached("centroid", organ, lambda: self.points(organ).mean(0) * self.spacing)

    def volume(self, organ: str) -> float:
        """Organ volume in mm^3."""
        return float(len(self.points(organ))) * float(np.prod(self.spacing))

    def mask(self, organ: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return self.label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == self.index[organ]

    def axes(self, organ: str) -> np.ndarray:
        """Principal axis lengths (mm, descending) of a uniform solid with the voxels' covariance:
        ``sqrt(12 * eigenvalue)`` (exact for a box), voxel size added in quadrature."""
        def compute() -> np.ndarray:
            pts = self.points(organ) * self.spacing
            cov = np.cov(pts.T) if len(pts) > 1 else np.zeros((3, 3))
            cov = cov + np.diag(self.spacing ** 2 / 12.0)  # each voxel is a small box, not a point
            return np.sqrt(12.0 * np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], 0.0, None))
        return self._cached("axes", organ, compute)

    def hull_ratio(self, organ: str) -> float:
        def compute() -> float:
            lo, hi = self.bbox(organ)
            return convex_hull_ratio(self.mask(organ, lo, hi), self.spacing)
        return self._cached("hull_ratio", organ, compute)

    def bbox(self, organ: str, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
        pts = self.points(organ)
        lo = np.maximum(pts.min(0) - pad, 0)
        hi = np.minimum(pts.max(0) + 1 + pad, self.label.shape)
        return lo, hi

    def hull(self, organ: str) -> ConvexHull | None:
        """Convex hull of the organ's voxel corners (index units), ``None`` if flat."""
        def compute() -> ConvexHull | None:
            lo, hi = self.bbox(organ, pad=1)
            mask = self.mask(organ, lo, hi)
            surface = mask & ~ndimage.binary_erosion(mask)  # interior voxels cannot be hull vertices
            pts = (np.argwhere(surface) + lo).astype(np.float64)
            corners = (pts[:, None, :] + np.array([[dx, dy, dz] for dx in (-.5, .5) for dy in (-.5, .5)
                                                   for dz in (-.5, .5)])[None]).reshape(-1, 3)
            try:
                return ConvexHull(np.unique(corners, axis=0))
            except QhullError:
                return None
        return self._cached("hull", organ, compute)

    def gap(self, a: str, b: str) -> float:
        """Minimum centre-to-centre distance (mm) between a voxel of ``a`` and one of ``b``
        (one voxel spacing when they touch), by a Euclidean distance transform on their joint box."""
        lo_a, hi_a = self.bbox(a, pad=1)
        lo_b, hi_b = self.bbox(b, pad=1)
        lo, hi = np.minimum(lo_a, lo_b), np.maximum(hi_a, hi_b)
        dist = ndimage.distance_transform_edt(~self.mask(a, lo, hi), sampling=self.spacing)
        return float(dist[self.mask(b, lo, hi)].min())


def _inside_share(vol: _Volume, subject: str, obj: str) -> float:
    """Share of ``obj``'s voxel centres inside the convex hull of ``subject``'s voxels."""
    hull = vol.hull(subject)
    if hull is None:
        return 0.0
    pts = vol.points(obj).astype(np.float64)
    inside = np.all(pts @ hull.equations[:, :3].T + hull.equations[:, 3] <= 1e-9, axis=1)
    return float(inside.mean())


def measure(vol: _Volume, claim: Claim) -> tuple[float, bool]:
    """``(value, holds)`` of one claim on one volume whose organs are present (units: :data:`UNITS`)."""
    s, o, rel = claim.subject, claim.object, claim.relation
    if rel in DIRECTIONS:
        axis, sign = DIRECTIONS[rel]
        value = float(sign * (vol.centroid(s)[axis] - vol.centroid(o)[axis]))
        return value, value > DIRECTION_MARGIN_MM
    if rel == "adjacent_to":
        value = vol.gap(s, o)
        return value, value <= ADJACENT_MM
    if rel == "surrounds":
        value = _inside_share(vol, s, o)
        return value, value >= SURROUNDS_SHARE
    if rel in ("larger_than", "smaller_than"):
        value = vol.volume(s) / vol.volume(o)
        return value, value > 1.0 if rel == "larger_than" else value < 1.0
    axes = vol.axes(s)
    elongation = float(axes[0] / max(axes[1], 1e-9))
    if rel == "elongated":
        return elongation, elongation >= ELONGATED_RATIO
    if rel == "tubular":
        diameter = 2.0 * np.sqrt(vol.volume(s) / (axes[0] * np.pi))  # cylinder of the same length and volume
        value = float(axes[0] / diameter)
        return value, value >= TUBULAR_ASPECT and elongation >= ELONGATED_RATIO
    hull = vol.hull_ratio(s)
    if rel == "compact":
        return hull, hull <= COMPACT_HULL
    if rel == "curved":
        return hull, hull >= CURVED_HULL
    raise ValueError(f"no measurement for relation {rel!r}")


def _thresholds(rel: str) -> str:
    if rel in DIRECTIONS:
        return f"> {DIRECTION_MARGIN_MM:g} mm"
    return {"adjacent_to": f"<= {ADJACENT_MM:g} mm", "surrounds": f">= {SURROUNDS_SHARE:g}",
            "elongated": f">= {ELONGATED_RATIO:g}", "tubular": f">= {TUBULAR_ASPECT:g}",
            "compact": f"<= {COMPACT_HULL:g}",
            "curved": f">= {CURVED_HULL:g}", "larger_than": "> 1", "smaller_than": "< 1"}[rel]


def validate_claims(claims: Sequence[Claim], label_maps: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
                    label_index: dict[str, int]) -> list[ClaimResult]:
    """Measure every claim on every label map (LPS arrays, spacing in mm) and aggregate.

    ``label_index`` maps class names to label ids. Claims naming organs outside it raise
    :class:`methods.common.errors.ConfigError`; an organ absent from a volume excludes that volume.
    """
    if len(label_maps) != len(spacings):
        raise ValueError(f"{len(label_maps)} label maps but {len(spacings)} spacings")
    for claim in claims:
        check_claim(claim, list(label_index), "validate_claims")
    volumes = [_Volume(lab, sp, label_index) for lab, sp in zip(label_maps, spacings)]
    results = []
    for claim in claims:
        organs = {claim.subject} | ({claim.object} if claim.object else set())
        values, holds = [], []
        for vol in volumes:
            if organs <= vol.present:
                value, ok = measure(vol, claim)
                values.append(value)
                holds.append(ok)
        unit = UNITS[claim.relation]
        if not holds:
            results.append(ClaimResult(claim, 0, float("nan"), float("nan"), None,
                                       f"not measurable: {' or '.join(sorted(organs))} absent in all "
                                       f"{len(volumes)} volume(s)"))
            continue
        share, median = float(np.mean(holds)), float(np.median(values))
        detail = (f"holds in {sum(holds)}/{len(holds)} volume(s); median {unit} {median:.3g} "
                  f"(range {min(values):.3g}..{max(values):.3g}); holds when {_thresholds(claim.relation)}")
        results.append(ClaimResult(claim, len(holds), share, median, share >= SUPPORT_SHARE, detail))
    return results


def validate_knowledge(kb: KnowledgeBase, label_maps: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
                       label_index: dict[str, int]) -> pd.DataFrame:
    """One row per claim of ``kb``: ``organ, claim, subject, relation, object, unit, n_volumes,
    support_share, measured, supported, detail`` (see :class:`ClaimResult`)."""
    owners = [(organ.name, claim) for organ in kb.organs.values() for claim in organ.claims]
    results = validate_claims([c for _, c in owners], label_maps, spacings, label_index)
    rows = [{"organ": owner, "claim": str(r.claim), "subject": r.claim.subject, "relation": r.claim.relation,
             "object": r.claim.object, "unit": UNITS[r.claim.relation], "n_volumes": r.n_volumes,
             "support_share": r.support_share, "measured": r.measured, "supported": r.supported, "detail": r.detail}
            for (owner, _), r in zip(owners, results)]
    columns = ["organ", "claim", "subject", "relation", "object", "unit", "n_volumes", "support_share", "measured",
               "supported", "detail"]
    return pd.DataFrame(rows, columns=columns)
