"""The reference behaviours issue 12 adds, each behind a flag, checked by hand."""
from __future__ import annotations

import math

import pytest
import torch

from methods.cld import ConfidenceBank
from methods.common.class_weights import inverse_frequency_weights
from methods.common.ga_losses import ga_dice, magic_dice
from tak.contrast import sample_voxels


@pytest.mark.parametrize(("absent", "expected"), [("keep", 0.25), ("zero", 0.0)])
def test_cld_bank_absent_class(absent: str, expected: float) -> None:
    """Two classes seen, class 2 absent from the window's ground truth: kept at its previous value
    (corrected) or set to 0 (reference). The first update replaces the initial values."""
    bank = ConfidenceBank(torch.tensor([0.5, 0.5, 0.25], dtype=torch.float64), every=1, momentum=0.999,
                          absent=absent)
    probs = torch.zeros(1, 3, 2, 1, 1)
    probs[0, 0, 0], probs[0, 1, 1] = 0.9, 0.6  # class 0 voxel with p 0.9, class 1 voxel with p 0.6
    bank.accumulate(probs, torch.tensor([[[[0]], [[1]]]]))
    assert bank.conf.tolist() == pytest.approx([0.9, 0.6, expected])
    rates = bank.sampling_rates(0.5).tolist()
    uncertainty = [0.1, 0.4, 1 - expected]
    assert rates == pytest.approx([math.sqrt(u / max(uncertainty)) for u in uncertainty])
    if absent == "zero":
        assert rates[2] == 1.0  # the absent class looks the most uncertain and is sampled most


def test_cld_weight_of_a_class_absent_from_the_labeled_set_is_finite() -> None:
    """The reference's max f / 0 is infinite; here the class counts as one voxel (documented)."""
    weights = inverse_frequency_weights(torch.tensor([8000.0, 1000.0, 0.0]))
    assert weights.tolist() == pytest.approx([1.0, 2.0, 20.0])
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize("loss", [ga_dice, magic_dice])
def test_dice_terms_accept_the_references_channel_dim_target(loss) -> None:
    torch.manual_seed(0)
    probs = torch.rand(2, 4, 3, 5, 4).softmax(1)
    labels = torch.randint(0, 3, (2, 3, 5, 4))
    assert loss(probs, labels[:, None]).item() == pytest.approx(loss(probs, labels).item(), rel=1e-7)


def test_tak_sampler_draws_only_for_classes_over_budget() -> None:
    """A view with class 1 on 2 voxels and class 2 on 5, budget 3: class 1 contributes both voxels
    in order without touching the random stream; class 2 draws 3 of 5."""
    embeddings = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1)
    labels = torch.tensor([1, 2, 2, 1, 2, 2, 2, 0]).view(1, 8, 1, 1)
    torch.manual_seed(0)
    _, classes = sample_voxels(embeddings, labels, 3)
    after_reference = torch.get_rng_state()
    torch.manual_seed(0)
    _ = torch.randperm(5)  # the one draw the reference makes (class 2)
    assert torch.equal(after_reference, torch.get_rng_state())
    feats, classes = sample_voxels(embeddings, labels[:, :4], 3)  # only classes 1 (2 voxels) and 2 (2)
    assert feats[:, 0].tolist() == [0.0, 3.0, 1.0, 2.0] and classes.tolist() == [1, 1, 2, 2]  # in order
    torch.manual_seed(0)
    sample_voxels(embeddings, labels, 3, draw_all=True)
    assert not torch.equal(after_reference, torch.get_rng_state())  # every class drew
