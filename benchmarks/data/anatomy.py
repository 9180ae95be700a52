"""Anatomy statistics of label maps (inputs of the paper's Figure 1) and the real reference profile.

Per organ: share of the foreground (its voxels / all organ voxels), convex-hull volume ratio
(volume of the convex hull of the voxels' corners / organ volume, 3-D; 1 for a box, larger for
curved or branching shapes; :func:`tak.validator.convex_hull_ratio`, which TAK's shape claims use
too), centroid and extent in mm.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from tak.validator import convex_hull_ratio

# Foreground share (%) of each organ in the real AMOS22 validation case 0013 (manual labels), from
# ../shared/realdata/README.md: voxel share of the whole volume, renormalised below to the foreground.
AMOS_0013_VOXEL_SHARE = {
    "liver": 1.738, "stomach": 0.535, "spleen": 0.440, "left_kidney": 0.187, "bladder": 0.148,
    "right_kidney": 0.142, "prostate_uterus": 0.124, "aorta": 0.096, "inferior_vena_cava": 0.092,
    "pancreas": 0.065, "duodenum": 0.052, "gallbladder": 0.031, "esophagus": 0.0086,
    "right_adrenal_gland": 0.0057, "left_adrenal_gland": 0.0054,
}


def reference_foreground_shares() -> dict[str, float]:
    """AMOS case 0013's share of the foreground per organ (fractions summing to 1)."""
    total = sum(AMOS_0013_VOXEL_SHARE.values())
    return {organ: share / total for organ, share in AMOS_0013_VOXEL_SHARE.items()}


def organ_statistics(labels: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
                     organs: Sequence[str]) -> pd.DataFrame:
    """One row per organ, averaged over the volumes in which it is present.

    Columns: ``organ, voxel_share`` (mean over cases of voxels / foreground voxels), ``hull_ratio``,
    ``centroid_{x,y,z}_mm`` (from the volume's first voxel), ``extent_{x,y,z}_mm``, ``cases_present``.
    """
    rows: dict[str, list[dict[str, float]]] = {o: [] for o in organs}
    shares: dict[str, list[float]] = {o: [] for o in organs}
    for label, spacing in zip(labels, spacings):
        foreground = max(int((label > 0).sum()), 1)
        sp = np.asarray(spacing, dtype=np.float64)
        for class_id, organ in enumerate(organs, start=1):
            mask = label == class_id
            shares[organ].append(mask.sum() / foreground)
            if not mask.any():
                continue
            idx = np.argwhere(mask)
            centroid = idx.mean(0) * sp
            extent = (idx.max(0) - idx.min(0) + 1) * sp
            rows[organ].append({"hull_ratio": convex_hull_ratio(mask, sp),
                                **{f"centroid_{a}_mm": c for a, c in zip("xyz", centroid)},
                                **{f"extent_{a}_mm": e for a, e in zip("xyz", extent)}})
    table = []
    for organ in organs:
        present = pd.DataFrame(rows[organ])
        entry = {"organ": organ, "voxel_share": float(np.mean(shares[organ])), "cases_present": len(present)}
        entry.update(present.mean().to_dict() if len(present) else {})
        table.append(entry)
    return pd.DataFrame(table)
