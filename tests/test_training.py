"""Batching, cropping and the training loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.data import Case
from benchmarks.training import TrainingDiverged, TwoStreamSampler, random_crop, train
from methods import get_method


def cases(n: int, shape: tuple[int, int, int] = (20, 24, 18), offset: int = 0) -> list[Case]:
    return [Case(f"c{i + offset}", np.full(shape, i + offset, np.float32), np.full(shape, (i + offset) % 3, np.uint8),
                 (1.0, 1.0, 1.0)) for i in range(n)]


@pytest.mark.parametrize(("policy", "n_l", "n_u"), [("two_stream", 2, 3), ("labeled_only", 2, 0), ("all_labeled", 5, 0)])
def test_batch_policies(policy: str, n_l: int, n_u: int) -> None:
    sampler = TwoStreamSampler(cases(4), cases(6, offset=10), 2, 3, (16, 16, 16), seed=0, policy=policy)
    batch = sampler.next()
    assert batch.image_l.shape == (n_l, 1, 16, 16, 16) and batch.label_l.shape == (n_l, 16, 16, 16)
    assert batch.image_u.shape == (n_u, 1, 16, 16, 16)
    assert batch.label_l.dtype == torch.int64
    if n_u:
        assert batch.image_u.min() >= 10  # unlabeled crops come from the unlabeled pool only


def test_streams_visit_every_case_once_per_pass() -> None:
    sampler = TwoStreamSampler(cases(4), cases(6, offset=10), 2, 2, (16, 16, 16), seed=1)
    batches = [sampler.next() for _ in range(2)]
    seen = [int(b.image_l[i, 0, 0, 0, 0]) for b in batches for i in range(2)]
    assert sorted(seen) == [0, 1, 2, 3]
    unlabeled = [int(b.image_u[i, 0, 0, 0, 0]) for b in batches + [sampler.next()] for i in range(2)]
    assert sorted(unlabeled) == list(range(10, 16))


def test_random_crop_pads_short_axes_centred() -> None:
    image = np.ones((10, 40, 40), np.float32)
    label = np.ones((10, 40, 40), np.uint8)
    crop, crop_label = random_crop(image, label, (16, 16, 16), np.random.default_rng(0))
    assert crop.shape == crop_label.shape == (16, 16, 16)
    assert crop[:3].sum() == 0 and crop[3:13].all() and crop[13:].sum() == 0  # 3 + 10 + 3


def test_image_and_label_crops_align() -> None:
    image = np.arange(30 * 30 * 30, dtype=np.float32).reshape(30, 30, 30)
    crop, crop_label = random_crop(image, image.astype(np.int64), (16, 16, 16), np.random.default_rng(3))
    np.testing.assert_array_equal(crop, crop_label)


def test_divergence_is_an_error() -> None:
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=2, lr=1e6, dropout=False), 3, max_iterations=20)
    sampler = TwoStreamSampler(cases(2, (16, 16, 16)), [], 2, 2, (16, 16, 16), seed=0, policy="labeled_only")
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train(method, sampler, 20, progress=False)
