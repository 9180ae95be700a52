"""Metric protocols: every empty-mask rule pinned, and agreement with medpy on real shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary

from benchmarks.metrics import PROTOCOLS, asd, dice, evaluate_case, get_protocol


def blob(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float, seed: int) -> np.ndarray:
    """An irregular 3-D blob: a sphere with a noisy radius."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return r < radius + rng.normal(0, 0.8, size=shape)


@pytest.mark.parametrize("spacing", [None, (2.0, 0.8, 0.8)])
def test_asd_matches_medpy(spacing: tuple[float, ...] | None) -> None:
    pred = blob((30, 34, 28), (14, 16, 13), 8, 0)
    gt = blob((30, 34, 28), (16, 15, 14), 9, 1)
    assert asd(pred, gt, spacing) == pytest.approx(medpy_binary.asd(pred, gt, spacing), rel=1e-12)
    assert asd(pred, gt, spacing, symmetric=True) == pytest.approx(medpy_binary.assd(pred, gt, spacing), rel=1e-12)
    assert dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt))
    assert asd(pred, gt) != asd(gt, pred)  # one-directional really is one-directional here


def test_asd_matches_medpy_when_masks_touch_the_border() -> None:
    pred = np.zeros((12, 12, 12), bool)
    pred[:6, 2:9, 3:12] = True
    gt = np.zeros_like(pred)
    gt[:5, 3:10, 2:12] = True
    assert asd(pred, gt) == pytest.approx(medpy_binary.asd(pred, gt))


def _maps(case: str) -> tuple[np.ndarray, np.ndarray]:
    """Two-class label maps where class 1 is always present in both and class 2 follows ``case``."""
    pred, gt = np.zeros((10, 10, 10), int), np.zeros((10, 10, 10), int)
    pred[1:4, 1:4, 1:4] = gt[1:4, 1:4, 1:5] = 1
    if case in ("both", "pred_only"):
        pred[6:9, 6:9, 6:9] = 2
    if case in ("both", "gt_only"):
        gt[6:9, 6:8, 6:9] = 2
    return pred, gt


DHC_TABLE = {  # docs/algorithms.md §3.2, TAK & GA test: (Dice %, ASD) of class 2
    "pred_only": (0.0, 128.0),
    "gt_only": (0.0, 128.0),
    "neither": (100.0, 0.0),
}


@pytest.mark.parametrize("case", sorted(DHC_TABLE))
def test_dhc_empty_mask_rules(case: str) -> None:
    pred, gt = _maps(case)
    dices, asds = evaluate_case(pred, gt, 3, PROTOCOLS["dhc"])
    assert (dices[1], asds[1]) == DHC_TABLE[case]
    assert dices[0] == pytest.approx(100 * medpy_binary.dc(pred == 1, gt == 1))


def test_dhc_both_present_uses_medpy_asd_in_voxels() -> None:
    pred, gt = _maps("both")
    dices, asds = evaluate_case(pred, gt, 3, PROTOCOLS["dhc"], spacing=(5.0, 5.0, 5.0))
    assert dices[1] == pytest.approx(100 * medpy_binary.dc(pred == 2, gt == 2))
    assert asds[1] == pytest.approx(medpy_binary.asd(pred == 2, gt == 2))  # spacing ignored: voxels


def test_dhc_all_background_prediction_scores_zero_everywhere() -> None:
    _, gt = _maps("both")
    dices, asds = evaluate_case(np.zeros_like(gt), gt, 3, PROTOCOLS["dhc"])
    assert dices.tolist() == [0.0, 0.0] and asds.tolist() == [0.0, 0.0]


def test_native_rules() -> None:
    protocol = get_protocol("native")
    spacing = (2.0, 1.0, 1.0)
    pred, gt = _maps("both")
    dices, asds = evaluate_case(pred, gt, 3, protocol, spacing)
    assert asds[1] == pytest.approx(medpy_binary.assd(pred == 2, gt == 2, spacing))
    for case in ("pred_only", "neither"):  # GT empty -> NaN, whatever the prediction
        dices, asds = evaluate_case(*_maps(case), 3, protocol, spacing)
        assert math.isnan(dices[1]) and math.isnan(asds[1])
    dices, asds = evaluate_case(*_maps("gt_only"), 3, protocol, spacing)  # missed organ
    assert dices[1] == 0.0
    assert asds[1] == pytest.approx(math.sqrt(20**2 + 10**2 + 10**2))  # image diagonal in mm
    dices, asds = evaluate_case(np.zeros((10, 10, 10), int), _maps("both")[1], 3, protocol, spacing)
    assert dices.tolist() == [0.0, 0.0]  # no all-background shortcut in native


def test_unknown_protocol_lists_known() -> None:
    with pytest.raises(KeyError, match="dhc"):
        get_protocol("nnunet")


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(np.zeros((4, 4, 4), int), np.zeros((4, 4, 5), int), 2, PROTOCOLS["dhc"])


@pytest.mark.parametrize("spacing", [None, (2.0, 0.8, 0.8)])
def test_hd95_and_hd_match_medpy(spacing: tuple[float, ...] | None) -> None:
    from benchmarks.metrics import surface_metrics
    pred = blob((30, 34, 28), (14, 16, 13), 8, 0)
    gt = blob((30, 34, 28), (16, 15, 14), 9, 1)
    found = surface_metrics(pred, gt, spacing)
    assert found["hd95"] == pytest.approx(medpy_binary.hd95(pred, gt, spacing), rel=1e-12)
    assert found["hd"] == pytest.approx(medpy_binary.hd(pred, gt, spacing), rel=1e-12)
    assert found["asd"] == pytest.approx(medpy_binary.asd(pred, gt, spacing), rel=1e-12)
    assert found["hd95"] < found["hd"]


@pytest.mark.parametrize(("tolerance", "spacing"), [(1.0, None), (2.0, None), (1.5, (2.0, 0.8, 0.8))])
def test_nsd_matches_monai(tolerance: float, spacing: tuple[float, ...] | None) -> None:
    import torch
    from monai.metrics import compute_surface_dice
    from benchmarks.metrics import surface_metrics
    pred = blob((30, 34, 28), (14, 16, 13), 8, 0)
    gt = blob((30, 34, 28), (16, 15, 14), 9, 1)
    found = surface_metrics(pred, gt, spacing, tolerance=tolerance)["nsd"]
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m]))[None].float()  # noqa: E731
    expected = compute_surface_dice(one_hot(pred), one_hot(gt), [tolerance], spacing=spacing or 1.0).item()
    assert found == pytest.approx(100 * expected, rel=1e-6)
    assert 0 < found < 100


def test_dhc_ntimes_is_the_reference_rule_by_hand() -> None:
    """DHC's evaluate_Ntimes: class 2 absent from both masks scores Dice 1 (not 100) on the 0-100
    scale; an all-background prediction is scored class by class (0 and 128), not as zeros."""
    gt = np.zeros((10, 10, 10), int)
    gt[2:6, 2:6, 2:6] = 1
    pred = gt.copy()
    faithful, corrected = get_protocol("dhc_ntimes"), get_protocol("dhc")
    d, a = evaluate_case(pred, gt, 3, faithful)
    assert d.tolist() == [100.0, 1.0] and a.tolist() == [0.0, 0.0]
    d, a = evaluate_case(pred, gt, 3, corrected)
    assert d.tolist() == [100.0, 100.0]
    d, a = evaluate_case(np.zeros_like(gt), gt, 3, faithful)
    assert d.tolist() == [0.0, 1.0] and a.tolist() == [128.0, 0.0]
    d, a = evaluate_case(np.zeros_like(gt), gt, 3, corrected)
    assert d.tolist() == [0.0, 0.0] and a.tolist() == [0.0, 0.0]


def test_case_metrics_empty_rules_for_the_new_metrics() -> None:
    from benchmarks.metrics import case_metrics
    gt = np.zeros((10, 10, 10), int)
    gt[2:6, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[7:9, 7:9, 7:9] = 2  # class 2 predicted, absent from the GT
    m = case_metrics(pred, gt, 4, get_protocol("dhc"))
    assert m["nsd"].tolist() == [100.0, 0.0, 100.0] and m["hd"].tolist() == [0.0, 128.0, 0.0]
    native = case_metrics(pred, gt, 4, get_protocol("native"), spacing=(1.0, 1.0, 1.0))
    assert native["nsd"][0] == 100.0 and np.isnan(native["hd95"][1:]).all()
