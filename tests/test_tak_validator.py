"""Claim measurements on hand-built label maps whose truth is known, and on the real CT (if present).

Arrays are LPS: +x = patient left, +y = posterior, +z = superior; spacings in mm.
"""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.config import PROJECT_ROOT
from benchmarks.data.prepare import read_label_map_lps
from benchmarks.errors import ConfigError
from tak.knowledge import Claim, load_knowledge
from tak.validator import ADJACENT_MM, validate_claims, validate_knowledge

INDEX = {"background": 0, "a": 1, "b": 2, "c": 3}
REAL = PROJECT_ROOT.parent / "shared" / "realdata"


def _one(claim: Claim, label: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    return validate_claims([claim], [label], [spacing], INDEX)[0]


def _two_boxes(axis: int, gap: int = 4) -> np.ndarray:
    """Box a at low index, box b at high index along ``axis`` (24^3), ``gap`` free voxels apart."""
    label = np.zeros((24, 24, 24), np.uint8)
    sl_a, sl_b = [slice(8, 14)] * 3, [slice(8, 14)] * 3
    sl_a[axis], sl_b[axis] = slice(2, 8), slice(8 + gap, 14 + gap)
    label[tuple(sl_a)], label[tuple(sl_b)] = 1, 2
    return label


@pytest.mark.parametrize("axis, towards_high, towards_low", [
    (0, "left_of", "right_of"), (1, "posterior_to", "anterior_to"), (2, "superior_to", "inferior_to")])
def test_directions_follow_lps_axes(axis: int, towards_high: str, towards_low: str) -> None:
    label = _two_boxes(axis, gap=4)  # centroids 10 voxels apart
    spacing = tuple(2.0 if i == axis else 1.0 for i in range(3))
    good = _one(Claim("b", towards_high, "a"), label, spacing)
    assert good.supported is True and good.support_share == 1.0 and good.n_volumes == 1
    assert good.measured == pytest.approx(20.0)  # mm, not voxels
    wrong = _one(Claim("b", towards_low, "a"), label, spacing)
    assert wrong.supported is False and wrong.measured == pytest.approx(-20.0)
    assert "holds in 0/1" in wrong.detail
    assert _one(Claim("a", towards_low, "b"), label, spacing).supported is True


def test_direction_needs_more_than_the_margin() -> None:
    label = np.zeros((24, 24, 24), np.uint8)
    label[4:10, 4:10, 4:10], label[5:11, 14:20, 4:10] = 1, 2  # b is 1 mm left of a: within the margin
    assert _one(Claim("b", "left_of", "a"), label).supported is False
    assert _one(Claim("b", "right_of", "a"), label).supported is False


def test_adjacency_uses_surface_distance_in_mm() -> None:
    touching = _two_boxes(0, gap=0)
    result = _one(Claim("a", "adjacent_to", "b"), touching, (1.5, 1.0, 1.0))
    assert result.supported is True and result.measured == pytest.approx(1.5)  # neighbouring voxel centres
    apart = _two_boxes(0, gap=8)  # 9 voxels between centres of the facing surfaces
    result = _one(Claim("a", "adjacent_to", "b"), apart, (2.0, 1.0, 1.0))
    assert result.measured == pytest.approx(18.0) and result.measured > ADJACENT_MM and result.supported is False


def test_surrounds_uses_the_subject_hull() -> None:
    label = np.zeros((24, 24, 24), np.uint8)
    label[4:20, 4:20, 4:20] = 1
    label[7:17, 7:17, 7:17] = 0  # hollow shell a ...
    label[9:15, 9:15, 9:15] = 2  # ... around b
    label[21:23, 21:23, 21:23] = 3  # c outside
    assert _one(Claim("a", "surrounds", "b"), label).measured == 1.0
    assert _one(Claim("a", "surrounds", "b"), label).supported is True
    assert _one(Claim("a", "surrounds", "c"), label).supported is False
    assert _one(Claim("b", "surrounds", "a"), label).measured < 0.1


def _tube() -> np.ndarray:
    label = np.zeros((24, 24, 24), np.uint8)
    x, y = np.meshgrid(np.arange(24), np.arange(24), indexing="ij")
    label[((x - 12) ** 2 + (y - 12) ** 2 <= 4)[:, :, None] & (np.arange(24) >= 1)[None, None, :]
          & (np.arange(24) <= 22)[None, None, :]] = 1  # vertical cylinder, radius 2, length 22
    label[2:8, 2:8, 2:8] = 2  # cube
    return label


def test_tube_is_tubular_and_elongated_cube_is_compact() -> None:
    label = _tube()
    tube, cube = [_one(Claim(o, "tubular"), label) for o in ("a", "b")]
    assert tube.supported is True and tube.measured > 3 and cube.supported is False
    assert _one(Claim("a", "elongated"), label).measured > 4
    assert _one(Claim("b", "elongated"), label).measured == pytest.approx(1.0)
    assert _one(Claim("b", "compact"), label).supported is True
    assert _one(Claim("b", "compact"), label).measured == pytest.approx(1.0)
    assert _one(Claim("b", "curved"), label).supported is False


def test_c_shape_is_curved_not_compact() -> None:
    label = np.zeros((24, 24, 24), np.uint8)
    x, z = np.meshgrid(np.arange(24), np.arange(24), indexing="ij")
    rho, angle = np.hypot(x - 12, z - 12), np.arctan2(z - 12, x - 12)
    ring = (np.abs(rho - 8) <= 1.5) & (np.abs(angle) > 0.8)  # C open towards +x
    label[:, 10:14, :][np.broadcast_to(ring[:, None, :], (24, 4, 24))] = 1
    curved = _one(Claim("a", "curved"), label)
    assert curved.supported is True and curved.measured > 2.0
    assert _one(Claim("a", "compact"), label).supported is False


def test_size_relations_compare_volumes() -> None:
    label = _two_boxes(0)
    label[2:5, 8:14, 8:14] = 0  # a loses half its voxels
    assert _one(Claim("a", "smaller_than", "b"), label).measured == pytest.approx(0.5)
    assert _one(Claim("a", "smaller_than", "b"), label).supported is True
    assert _one(Claim("a", "larger_than", "b"), label).supported is False


def test_aggregation_over_volumes_and_absent_organs() -> None:
    right, wrong = _two_boxes(0), _two_boxes(0)[::-1].copy()
    only_a = np.where(_two_boxes(0) == 1, 1, 0).astype(np.uint8)
    claim = Claim("b", "left_of", "a")
    r = validate_claims([claim], [right, right, wrong, only_a], [(1.0, 1.0, 1.0)] * 4, INDEX)[0]
    assert r.n_volumes == 3 and r.support_share == pytest.approx(2 / 3) and r.supported is True
    r = validate_claims([claim], [right, wrong, wrong], [(1.0, 1.0, 1.0)] * 3, INDEX)[0]
    assert r.support_share == pytest.approx(1 / 3) and r.supported is False
    absent = validate_claims([Claim("c", "left_of", "a")], [right], [(1.0, 1.0, 1.0)], INDEX)[0]
    assert absent.supported is None and absent.n_volumes == 0 and math.isnan(absent.support_share)
    assert "not measurable" in absent.detail


def test_unknown_organ_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown object organ 'kidney'"):
        validate_claims([Claim("a", "left_of", "kidney")], [_two_boxes(0)], [(1.0, 1.0, 1.0)], INDEX)


def test_validate_knowledge_one_row_per_claim(tmp_path: Path) -> None:
    kb_path = tmp_path / "kb.yaml"
    kb_path.write_text("version: t\nsource: test\norgans:\n"
                       "  background: {position: x., shape: y.}\n"
                       "  a: {position: x., shape: y., claims: [{subject: a, relation: right_of, object: b}]}\n"
                       "  b: {position: x., shape: y., claims: [{subject: b, relation: right_of, object: a},"
                       " {subject: b, relation: compact}]}\n")
    table = validate_knowledge(load_knowledge(kb_path), [_two_boxes(0)], [(1.0, 1.0, 1.0)], INDEX)
    assert list(table["claim"]) == ["a right_of b", "b right_of a", "b compact"]
    assert list(table["supported"]) == [True, False, True] and list(table["organ"]) == ["a", "b", "b"]


def test_read_label_map_lps_reorients_to_lps(tmp_path: Path) -> None:
    data = np.zeros((8, 6, 4), np.uint8)
    data[0, 0, 0] = 1  # RAS array: x grows to the right, y to anterior: this is the left-posterior corner
    path = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
    label, spacing = read_label_map_lps(path)
    assert spacing == (2.0, 3.0, 4.0) and label.shape == (8, 6, 4)
    assert label[7, 5, 0] == 1  # LPS: that corner is at the highest x (left) and highest y (posterior)


@pytest.mark.skipif(not (REAL / "ts_example_ct_label_amos15.nii.gz").is_file(),
                    reason="../shared/realdata (real CT labels) is absent on this machine")
def test_real_ct_orientation_and_shipped_claims() -> None:
    label, spacing = read_label_map_lps(REAL / "ts_example_ct_label_amos15.nii.gz")
    idx = {name: i for i, name in enumerate(load_knowledge("amos").organs)}
    liver = np.argwhere(label == idx["liver"]).mean(0)
    spleen = np.argwhere(label == idx["spleen"]).mean(0)
    assert liver[0] < spleen[0]  # the liver lies on the patient's right = low x in LPS
    checks = [Claim("liver", "right_of", "spleen"), Claim("spleen", "posterior_to", "stomach"),
              Claim("bladder", "inferior_to", "liver"), Claim("liver", "left_of", "spleen")]
    results = validate_claims(checks, [label], [spacing], idx)
    assert [r.supported for r in results] == [True, True, True, False]
    table = validate_knowledge(load_knowledge("amos"), [label], [spacing], idx)
    contradicted = table[table["supported"] == False]  # noqa: E712
    assert contradicted.empty, contradicted[["claim", "detail"]].to_string()
