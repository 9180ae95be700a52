"""The DHC-repository adaptations' distinctive pieces against values computed by hand: Adsh's
thresholds after a buffer fill and its logit masking, DePL's per-voxel marginal and debiased labels,
Basak's class indicators (corrected and the reference's broadcast), fuzzy-rank sampling rates and mask.
(CReST's and SimiS's weights: tests/test_class_weights.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods import Batch, get_method
from methods.adsh import AdaptiveThresholds, class_mask
from methods.basak import class_indicators, fuzzy_rank_sampling
from methods.depl import debiased_pseudo_labels


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """(1, C, V, 1, 1) logits whose softmax over C is ``probs`` (V voxels x C classes)."""
    return torch.tensor(probs).log().T[None, :, :, None, None]


def test_adsh_thresholds_after_the_buffer_fills() -> None:
    buffer = AdaptiveThresholds(num_classes=3, length=2, major_threshold=0.9)
    first = logits_of([[0.95, 0.03, 0.02], [0.92, 0.05, 0.03], [0.5, 0.4, 0.1]])
    second = logits_of([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    assert buffer.observe(first).tolist() == [0, 0, 0]  # stored; thresholds still 0
    assert buffer.filled == 1
    # length 2: filled 1 is not < 1, so the second call updates from the buffer (slot 1 never written:
    # an all-zero map, whose 3 voxels argmax to class 0) and does not store ``second``.
    thresholds = buffer.observe(second)
    # predicted: class 0 on 3 + 3 voxels = 6, class 1 on 0, class 2 on 0; p_0 > 0.9 on 2 -> rho = 2/6.
    # tau_0 = the int(2/6 * 6) = 2nd (0-based) largest p_0 over the 6 buffered voxels (0.95, 0.92, 0.5, 0, 0, 0)
    # = 0.5; tau_1 and tau_2: rank 0 -> their largest score, 0.4 and 0.1.
    assert thresholds.tolist() == pytest.approx([0.5, 0.4, 0.1], abs=1e-6)
    assert buffer.filled == 0


def test_adsh_masks_multiply_the_other_networks_logits() -> None:
    logits = logits_of([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    mask = class_mask(logits, torch.tensor([0.5, 0.4, 0.2]))
    assert mask[0, :, :, 0, 0].T.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    cls = get_method("adsh")
    torch.manual_seed(0)
    method = cls(cls.Config(base_filters=4, cps_weight=1.0, dropout=False), 3, max_iterations=1, patch=(16, 16, 16))
    method.observe_data([torch.zeros(4, 4, 4, dtype=torch.long).numpy()], iterations_per_epoch=1)
    batch = Batch(torch.rand(1, 1, 16, 16, 16), torch.randint(0, 3, (1, 16, 16, 16)), torch.rand(1, 1, 16, 16, 16))
    x = torch.cat([batch.image_l, batch.image_u])
    with torch.no_grad():
        z_a, z_b = method.net_a.train()(x), method.net_b.train()(x)
    buffers = method._buffers(1)
    for buffer in buffers:  # thresholds as after an update: the masks now remove logits
        buffer.thresholds = torch.tensor([0.3, 0.3, 0.3])
        buffer.filled = 0  # the next call stores instead of updating
    mask_a, mask_b = class_mask(z_a, buffers[0].thresholds), class_mask(z_b, buffers[1].thresholds)
    expected = F.cross_entropy(z_a * mask_b, z_b.argmax(1)) + F.cross_entropy(z_b * mask_a, z_a.argmax(1))
    assert 0 < mask_b.mean() < 1
    assert method.train_step(batch, 0)["loss_cps"] == pytest.approx(expected.item(), rel=1e-5)


def test_depl_debiased_labels_by_hand() -> None:
    # two voxels; marginal per voxel: voxel 0 over-predicts class 0, voxel 1 is uniform
    z = torch.tensor([[2.0, 0.0], [2.0, 0.0]]).T.reshape(1, 2, 2)
    q = torch.tensor([[0.9, 0.1], [0.5, 0.5]]).T.reshape(1, 2, 2)
    labels, mask = debiased_pseudo_labels(z, q, tau=1.0, threshold=0.8)
    # voxel 0: z - log q = (2 - ln 0.9, ln 10): class 1, p = 1 / (1 + 0.9 e^2 / 10) = 0.600 < 0.8
    # voxel 1: z - log q = (2 + ln 2, ln 2): class 0, p = e^2 / (1 + e^2) = 0.881 >= 0.8
    assert labels.tolist() == [[1, 0]] and mask.tolist() == [[0.0, 1.0]]
    assert 1 / (1 + 0.9 * math.exp(2) / 10) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("marginal_loss", [False, True])
def test_depl_marginal_is_per_voxel_and_updated_after_the_labels(marginal_loss: bool) -> None:
    cls = get_method("depl")
    torch.manual_seed(0)
    method = cls(cls.Config(base_filters=4, cps_weight=1.0, dropout=False, threshold=0.0, marginal_loss=marginal_loss), 3,
                 max_iterations=1, patch=(16, 16, 16))
    assert method.marginals[0].shape == (1, 3, 16, 16, 16) and torch.all(method.marginals[0] == 1 / 3)
    batch = Batch(torch.rand(1, 1, 16, 16, 16), torch.randint(0, 3, (1, 16, 16, 16)), torch.rand(2, 1, 16, 16, 16))
    x = torch.cat([batch.image_l, batch.image_u])
    with torch.no_grad():
        z_a, z_b = method.net_a.train()(x), method.net_b.train()(x)
    # pseudo-labels from the initial (uniform) marginal: plain argmax; threshold 0 keeps every voxel
    shift = torch.zeros_like(z_a)
    q_next = [0.99 / 3 + 0.01 * torch.softmax(z[1:], 1).mean(0, keepdim=True) for z in (z_a, z_b)]
    if marginal_loss:  # A's unlabeled logits shifted by B's updated marginal, and the other way round
        shift_a, shift_b = shift.clone(), shift.clone()
        shift_a[1:], shift_b[1:] = torch.log(q_next[1]).expand(2, -1, -1, -1, -1), torch.log(q_next[0]).expand(2, -1, -1, -1, -1)
    else:
        shift_a = shift_b = shift
    expected = (F.cross_entropy(z_a + shift_a, z_b.argmax(1)) + F.cross_entropy(z_b + shift_b, z_a.argmax(1)))
    assert method.train_step(batch, 0)["loss_cps"] == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(method.marginals[0], q_next[0]) and torch.allclose(method.marginals[1], q_next[1])


def basak_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two samples, two voxels, two classes: p(s0) = (0.8, 0.2), (0.4, 0.6); p(s1) = (0.3, 0.7), (0.9, 0.1);
    labels s0 = (0, 1), s1 = (0, 0). Returns logits (2, 2, 2) and labels (2, 2)."""
    probs = torch.tensor([[[0.8, 0.4], [0.2, 0.6]], [[0.3, 0.9], [0.7, 0.1]]])
    return probs.log(), torch.tensor([[0, 1], [0, 0]])


def test_basak_indicators_per_sample_by_hand() -> None:
    logits, labels = basak_batch()
    entropy, confidence, variance = class_indicators(logits, labels, "per_sample").tolist()
    log = math.log
    # class 0 on (s0, v0), (s1, v0), (s1, v1); class 1 on (s0, v1)
    assert confidence == pytest.approx([(0.8 + 0.3 + 0.9) / 3, 0.6])
    assert variance == pytest.approx([(0.0 + 0.4 + 0.0) / 3, 0.0])
    e0 = (0.8 * (log(0.8) + log(0.2)) + 0.3 * (log(0.3) + log(0.7)) + 0.9 * (log(0.9) + log(0.1))) / 3
    assert entropy == pytest.approx([e0, 0.6 * (log(0.4) + log(0.6))], rel=1e-5)


def test_basak_indicators_cross_sample_reproduce_the_broadcast() -> None:
    logits, labels = basak_batch()
    confidence = class_indicators(logits, labels, "cross_sample")[1].tolist()
    # every sample's p_c times every sample's [y = c]: class 0: v0 (0.8 + 0.3) x 2 + v1 (0.4 + 0.9) x 1, over 3
    assert confidence == pytest.approx([(1.1 * 2 + 1.3 * 1) / 3, (0.6 + 0.1) * 1 / 1])
    # the reference's own broadcast of a (B, 1, ...) mask, written out
    probs, gt = logits.softmax(1), labels[:, None]
    reference = [float(torch.sum(probs[:, c] * (gt == c)) / ((gt == c).sum() + 1e-12)) for c in range(2)]
    assert confidence == pytest.approx(reference)


def reference_fuzzy_rank(indicators: np.ndarray, cc: np.ndarray, top: int, penalty: float = 0.632) -> tuple:
    """The reference's ``fuzzy_rank`` / ``CFS_func`` / ``cal_sampling_rate`` loops written out."""
    ranks = np.exp(indicators) / np.exp(indicators).sum(1, keepdims=True)
    gompertz = 1 - np.exp(-np.exp(-2.0 * ranks))
    kept = penalty * np.ones_like(gompertz)
    for i in range(gompertz.shape[0]):
        for k in range(top):
            idx = np.where(gompertz[i] == np.partition(gompertz[i], k)[k])
            kept[i][idx] = gompertz[i][idx]
    fr = kept.sum(0)
    cf = ranks.copy()
    for f in range(cf.shape[0]):
        cf[f][np.where(kept[f] == penalty)] = 0
    current = (1 - cf.sum(0) / cf.shape[0]) * fr
    cc = 0.99 * cc + 0.01 * current / current.max()
    rates = (1 - cc) / ((1 - cc).max() + 1e-12)
    return cc, rates ** 2.5


def test_basak_fuzzy_rank_matches_the_reference_loops() -> None:
    rng = np.random.default_rng(0)
    indicators = rng.normal(size=(3, 16))
    indicators[0, 3] = indicators[0, 7]  # a tie, which the reference keeps (or drops) together
    cc = rng.uniform(0, 1, 16)
    ours_cc, ours_rates = fuzzy_rank_sampling(torch.tensor(indicators), torch.tensor(cc), 12, 0.632, 0.99, 2.5)
    ref_cc, ref_rates = reference_fuzzy_rank(indicators, cc, 12)
    assert ours_cc.numpy() == pytest.approx(ref_cc, rel=1e-9)
    assert ours_rates.numpy() == pytest.approx(ref_rates, rel=1e-9)
    assert ours_rates.max() == pytest.approx(1.0) and (ours_rates >= 0).all()


def test_basak_sampling_mask_keeps_class_c_with_probability_s_c() -> None:
    cls = get_method("basak")
    method = cls(cls.Config(base_filters=4), 2, max_iterations=1, patch=(16, 16, 16))
    method.rates = torch.tensor([1.0, 0.25], dtype=torch.float64)
    torch.manual_seed(0)
    probs = torch.tensor([0.3, 0.7]).reshape(1, 2, 1, 1, 1).expand(1, 2, 100, 100, 20)  # all predicted class 1
    mask = method.sampling_mask(probs.log())
    kept = mask > 0
    assert kept.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert torch.allclose(mask[kept], torch.tensor(0.7) ** 1.5)
    method.rates = torch.tensor([0.25, 1.0], dtype=torch.float64)
    assert (method.sampling_mask(probs.log()) > 0).all()
