"""Anatomy statistics on shapes with known answers, and the synthetic cohort's calibration."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.data.anatomy import (AMOS_0013_VOXEL_SHARE, organ_statistics,
                                     reference_foreground_shares)
from benchmarks.data.synthetic import AMOS_CLASSES, SyntheticAbdomen
from tak.validator import convex_hull_ratio

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def test_hull_ratio_of_a_box_is_one() -> None:
    box = np.zeros((10, 10, 10), bool)
    box[2:7, 3:5, 1:9] = True
    assert convex_hull_ratio(box) == pytest.approx(1.0)
    assert convex_hull_ratio(box, (2.0, 0.5, 3.0)) == pytest.approx(1.0)


def test_hull_ratio_of_an_l_shape() -> None:
    # three unit cubes in an L, extruded by 2: volume 6, hull = pentagon of area 3.5 x 2 = 7
    shape = np.zeros((3, 3, 2), bool)
    shape[0:2, 0, :] = True
    shape[0, 1, :] = True
    assert convex_hull_ratio(shape) == pytest.approx(7 / 6)


def test_statistics_columns_and_shares() -> None:
    label = np.zeros((8, 8, 8), np.uint8)
    label[0:4, 0:4, 0:4] = 1   # 64 voxels
    label[5:7, 5:7, 5:7] = 2   # 8 voxels
    table = organ_statistics([label], [(1.0, 2.0, 1.0)], ["a", "b", "c"]).set_index("organ")
    assert table.loc["a", "voxel_share"] == pytest.approx(64 / 72)
    assert table.loc["b", "extent_y_mm"] == pytest.approx(4.0)
    assert table.loc["a", "centroid_x_mm"] == pytest.approx(1.5)
    assert table.loc["c", "cases_present"] == 0 and table.loc["c", "voxel_share"] == 0


def test_synthetic_cohort_is_calibrated_to_real_amos() -> None:
    """Every organ's foreground share within 1.5x of AMOS case 0013; stomach or duodenum has the
    most complex shape (largest convex-hull ratio)."""
    generator = SyntheticAbdomen()
    volumes = [generator.generate((64, 64, 48), seed) for seed in range(12)]
    table = organ_statistics([v[1] for v in volumes], [v[2] for v in volumes], AMOS_CLASSES[1:]).set_index("organ")
    reference = reference_foreground_shares()
    for organ, share in reference.items():
        ratio = table.loc[organ, "voxel_share"] / share
        assert 1 / 1.5 <= ratio <= 1.5, f"{organ}: synthetic/real share {ratio:.2f}"
    assert table["hull_ratio"].idxmax() in ("stomach", "duodenum")
    assert reference["liver"] / reference["left_adrenal_gland"] == pytest.approx(1.738 / 0.0054)


@pytest.mark.skipif(not (REALDATA / "amos_0013_label_only.nii.gz").is_file(), reason="../shared/realdata is absent")
def test_reference_shares_match_the_real_label_file() -> None:
    label = np.asarray(nib.load(str(REALDATA / "amos_0013_label_only.nii.gz")).dataobj)
    counts = np.bincount(label.reshape(-1), minlength=16)
    for class_id, organ in enumerate(AMOS_CLASSES[1:], start=1):
        assert 100 * counts[class_id] / label.size == pytest.approx(AMOS_0013_VOXEL_SHARE[organ], abs=6e-4)
