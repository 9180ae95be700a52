"""Class weightings of DHC and CLD against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from methods.cld import ConfidenceBank
from methods.common.class_weights import (DifficultyWeighting, DistributionWeighting, PseudoLabelWeighting,
                                          distribution_weights, hard_dice_per_class, inverse_frequency_weights,
                                          proportion_gap_weights, reversed_frequency_weights)


def logits_for(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits ``(1, C, N, 1, 1)`` whose argmax is ``pred`` (a 1-D label vector)."""
    return torch.nn.functional.one_hot(pred, num_classes).T.float()[None, :, :, None, None] * 5


def test_distribution_weights_by_hand() -> None:
    w = distribution_weights(torch.tensor([1000.0, 100.0, 10.0, 0.0]))
    # r = [1, 10, 100, 1e11]; log r / max log r, times C = 4
    big = math.log(1000 / 1e-8)
    expected = [0.0, 4 * math.log(10) / big, 4 * math.log(100) / big, 4.0]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_distribution_weighting_ema() -> None:
    dw = DistributionWeighting(3)
    dw.init_from_labels([torch.tensor([0] * 100 + [1] * 10 + [2]).numpy()])
    w0 = dw.weights.clone()
    assert w0.tolist() == pytest.approx([0.0, 3 * math.log(10) / math.log(100), 3.0], rel=1e-6)
    pred = torch.tensor([0] * 5 + [1] * 50 + [2] * 500)  # B's pseudo-labels: class 2 dominates now
    current = distribution_weights(torch.tensor([5.0, 50.0, 500.0]))
    w1 = dw.update(logits_for(pred, 3))
    assert w1.tolist() == pytest.approx((0.99 * w0 + 0.01 * current).tolist(), rel=1e-6)


def test_hard_dice_absent_class_is_half() -> None:
    pred = torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 1, 1, 1]).reshape(1, 4, 1, 1)
    dice = hard_dice_per_class(logits_for(pred, 3), labels)
    assert dice.tolist() == pytest.approx([2 * 1 / 3, 2 * 2 / 5, 0.5])


def test_difficulty_weighting_two_steps_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1]).reshape(1, 4, 1, 1)
    dw = DifficultyWeighting(2, accumulate_iters=50)
    beta = 0.98
    # step 1: perfect prediction -> dice [1, 1]; delta = 1 - 1e-8 > 0
    dw.update(logits_for(torch.tensor([0, 0, 1, 1]), 2), labels)
    learn1 = (1 - 1e-8) * math.log(1 / 1e-8)
    # step 2: one class-1 voxel lost -> dice [2*2/5, 2*1/3]; both decreased
    w = dw.update(logits_for(torch.tensor([0, 0, 0, 1]), 2), labels)
    d2 = [0.8, 2 / 3]
    learned = [beta * (1 - beta) * learn1] * 2
    unlearned = [(1 - beta) * (d - 1) * math.log(d) for d in d2]
    difficulty = [((u + 1e-8) / (l + 1e-8)) ** 0.2 for u, l in zip(unlearned, learned)]
    deficit = [beta * (beta * 1 + (1 - beta) * 0) + (1 - beta) * (1 - d) for d in d2]
    score = [a * b for a, b in zip(difficulty, deficit)]
    expected = [2 * s / max(score) for s in score]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)
    assert w[1] > w[0]  # the class that lost more is weighted up


def test_inverse_frequency_weights() -> None:
    assert inverse_frequency_weights(torch.tensor([8000.0, 1000.0, 0.0])).tolist() == pytest.approx(
        [1.0, 2.0, 20.0], rel=1e-6)


def test_cld_confidence_bank_and_sampling_rates() -> None:
    bank = ConfidenceBank(torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64), every=2, momentum=0.999)
    labels = torch.tensor([0, 0, 1, 2]).reshape(1, 4, 1, 1)
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.2, 0.0, 0.8]])
    probs = probs.T[None, :, :, None, None]
    bank.accumulate(probs, labels)
    assert bank.conf.tolist() == [0.3, 0.3, 0.3]  # nothing before `every` iterations
    bank.accumulate(probs, labels)
    assert bank.conf.tolist() == pytest.approx([0.8, 0.5, 0.8])  # first update replaces
    rates = bank.sampling_rates(0.5)
    assert rates.tolist() == pytest.approx([math.sqrt(0.2 / 0.5), 1.0, math.sqrt(0.2 / 0.5)])
    bank.accumulate(probs, labels)
    bank.accumulate(probs, labels)
    assert bank.conf.tolist() == pytest.approx([0.8, 0.5, 0.8])  # later updates: EMA of equal values


def test_crest_reversed_frequency_by_hand() -> None:
    # counts 8000, 1000, 1000, 0: mu = (n / max)^(1/3) = 1, 0.5, 0.5, ~1.08e-4. Descending order (ties keep
    # class order): 0, 1, 2, 3; class ranked l takes the mu of rank C - 1 - l.
    w = reversed_frequency_weights(torch.tensor([8000.0, 1000.0, 1000.0, 0.0]))
    tiny = (1e-8 / (8000 + 1e-8)) ** (1 / 3)
    assert w.tolist() == pytest.approx([tiny, 0.5, 0.5, 1.0], rel=1e-6)
    # the order follows the counts, not the class index
    assert reversed_frequency_weights(torch.tensor([1.0, 1000.0, 125.0])).tolist() == pytest.approx([1.0, 0.1, 0.5])


def test_simis_proportion_gap_by_hand() -> None:
    # P = 0.7, 0.2, 0.1, 0 -> C (max P - P) = 4 * (0, 0.5, 0.6, 0.7)
    w = proportion_gap_weights(torch.tensor([70.0, 20.0, 10.0, 0.0]))
    assert w.tolist() == pytest.approx([0.0, 2.0, 2.4, 2.8], abs=1e-6)


def test_pseudo_label_weighting_initialisation_and_update() -> None:
    labels = [torch.tensor([0] * 6 + [1] * 3 + [2]).numpy()]  # P = 0.6, 0.3, 0.1 -> w = 3 (0, 0.3, 0.5)
    simis = PseudoLabelWeighting(3, proportion_gap_weights, 0.99)
    simis.init_from_labels(labels, blend_with_uniform=True)  # one EMA step away from w = C = 3
    assert simis.weights.tolist() == pytest.approx([0.99 * 3, 0.99 * 3 + 0.01 * 0.9, 0.99 * 3 + 0.01 * 1.5])
    crest = PseudoLabelWeighting(3, reversed_frequency_weights, 0.99)
    crest.init_from_labels(labels)  # straight from the labeled counts
    mu = [1.0, 0.5 ** (1 / 3), (1 / 6) ** (1 / 3)]
    assert crest.weights.tolist() == pytest.approx([mu[2], mu[1], mu[0]], rel=1e-6)
    # update: counts of the argmax (all class 1) -> rule gives class 1 the smallest mu
    before = crest.weights.clone()
    out = crest.update(logits_for(torch.tensor([1, 1, 1, 1]), 3))
    tiny = (1e-8 / (4 + 1e-8)) ** (1 / 3)
    # mu = (tiny, 1, tiny); order 1, 0, 2 (the tie keeps class order): class 1 <- rank 2's mu (tiny),
    # class 0 <- rank 1's mu (tiny), class 2 <- rank 0's mu (1)
    current = torch.tensor([tiny, tiny, 1.0], dtype=torch.float64)
    assert out.double().tolist() == pytest.approx((0.99 * before + 0.01 * current).tolist(), rel=1e-5)


@pytest.mark.parametrize(("name", "unlabeled_only"), [("crest", True), ("simis", False)])
def test_crest_counts_unlabeled_output_simis_whole_batch(name: str, unlabeled_only: bool) -> None:
    from methods import Batch, get_method
    cls = get_method(name)
    torch.manual_seed(0)
    method = cls(cls.Config(base_filters=4), 3, max_iterations=10, patch=(16, 16, 16))
    method.observe_data([torch.tensor([0] * 6 + [1] * 3 + [2]).numpy()], iterations_per_epoch=5)
    seen: list[int] = []
    original = method.weighting[0].update
    method.weighting[0].update = lambda logits: (seen.append(logits.shape[0]), original(logits))[1]
    batch = Batch(torch.rand(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16)), torch.rand(3, 1, 16, 16, 16))
    method.train_step(batch, 1)
    assert seen == ([3] if unlabeled_only else [5])
