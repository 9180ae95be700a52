"""Batching, cropping and the training loop."""
from __future__ import annotations

from pathlib import Path

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


def test_flip_xy_flips_each_in_plane_axis_with_probability_half_reproducibly() -> None:
    """Marked volumes reveal each crop's flips; both streams are augmented; the seed fixes them."""
    shape = (16, 16, 16)
    base = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    marked = [Case("m", base.copy(), (base % 7).astype(np.uint8), (1.0, 1.0, 1.0))]
    unlabeled = [Case("u", base.copy() + 1e5, np.zeros(shape, np.uint8), (1.0, 1.0, 1.0))]

    def flips(seed: int, n: int = 200) -> list[tuple[bool, bool, bool]]:
        sampler = TwoStreamSampler(marked, unlabeled, 1, 1, shape, seed=seed, augmentation="flip_xy")
        out = []
        for _ in range(n):
            batch = sampler.next()
            for crop, offset in ((batch.image_l[0, 0].numpy(), 0.0), (batch.image_u[0, 0].numpy(), 1e5)):
                found = next((fx, fy, fz) for fx in (0, 1) for fy in (0, 1) for fz in (0,)
                             if np.array_equal(crop - offset, np.flip(base, [a for a, f in ((0, fx), (1, fy)) if f])))
                out.append((bool(found[0]), bool(found[1]), bool(found[2])))
            label = batch.label_l[0].numpy()
            assert np.array_equal(label, (batch.image_l[0, 0].numpy() % 7).astype(np.int64))  # image and label together
        return out

    drawn = flips(0)
    rate_x = np.mean([f[0] for f in drawn])
    rate_y = np.mean([f[1] for f in drawn])
    assert 0.4 < rate_x < 0.6 and 0.4 < rate_y < 0.6  # 400 crops: p 0.5 per axis
    assert not any(f[2] for f in drawn)  # never along z
    assert drawn == flips(0) and drawn != flips(1)  # reproduced from the seed


def test_no_augmentation_draws_nothing_extra() -> None:
    a = TwoStreamSampler(cases(4), cases(6, offset=10), 2, 2, (16, 16, 16), seed=5)
    b = TwoStreamSampler(cases(4), cases(6, offset=10), 2, 2, (16, 16, 16), seed=5, augmentation="none")
    for _ in range(3):
        x, y = a.next(), b.next()
        assert torch.equal(x.image_l, y.image_l) and torch.equal(x.image_u, y.image_u)


def test_warmup_ramps_the_rate_then_decays_to_zero_at_the_budget() -> None:
    """``warmup_fraction`` 0.25 of 8 iterations: rates base/2, base at steps 0, 1, then the poly decay."""
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=2, lr=0.1, dropout=False), 3, max_iterations=8)
    sampler = TwoStreamSampler(cases(2, (16, 16, 16)), [], 2, 2, (16, 16, 16), seed=0, policy="labeled_only")
    rates: list[float] = []
    train(method, sampler, 8, log_every=1, progress=False, warmup_fraction=0.25,
          on_log=lambda step, logs: rates.append(logs["lr"]))
    assert rates[:2] == pytest.approx([0.05, 0.1 * (1 - 1 / 8) ** 0.9])
    assert rates[2:] == pytest.approx([0.1 * (1 - s / 8) ** 0.9 for s in range(2, 8)])
    assert method.optimizers[0].param_groups[0]["lr"] == pytest.approx(rates[-1])


def test_held_rate_stays_at_the_base_then_decays_to_zero_at_the_budget() -> None:
    """``hold_fraction`` 0.5 of 8 iterations after a 0.25 warm-up: base/2, then the base rate through
    step 3, then the poly decay over the last 4 steps."""
    cls = get_method("supervised")
    method = cls(cls.Config(base_filters=2, lr=0.1, dropout=False), 3, max_iterations=8)
    sampler = TwoStreamSampler(cases(2, (16, 16, 16)), [], 2, 2, (16, 16, 16), seed=0, policy="labeled_only")
    rates: list[float] = []
    train(method, sampler, 8, log_every=1, progress=False, warmup_fraction=0.25, hold_fraction=0.5,
          on_log=lambda step, logs: rates.append(logs["lr"]))
    assert rates[:4] == pytest.approx([0.05, 0.1, 0.1, 0.1])
    assert rates[4:] == pytest.approx([0.1 * (1 - s / 4) ** 0.9 for s in range(4)])


def test_prefetched_batches_and_states_equal_the_plain_sampler() -> None:
    """Prefetching draws the same batches in the same order, and its state resumes with the very next
    batch (a checkpoint taken while batches are prefetched loses none and repeats none)."""
    from benchmarks.prefetch import PrefetchingSampler
    pools = (cases(3, (20, 24, 18)), cases(5, (20, 24, 18), offset=10))
    plain = TwoStreamSampler(*pools, 2, 2, (16, 16, 16), seed=7, augmentation="flip_xy")
    ahead = PrefetchingSampler(TwoStreamSampler(*pools, 2, 2, (16, 16, 16), seed=7, augmentation="flip_xy"), depth=3)
    for _ in range(4):
        a, b = plain.next(), ahead.next()
        assert torch.equal(a.image_l, b.image_l) and torch.equal(a.label_l, b.label_l) and torch.equal(a.image_u, b.image_u)
    saved = ahead.state()
    assert saved == plain.state()
    expected = [plain.next() for _ in range(3)]
    resumed = PrefetchingSampler(TwoStreamSampler(*pools, 2, 2, (16, 16, 16), seed=99, augmentation="flip_xy"))
    resumed.load_state(saved)
    for batch in expected:
        assert torch.equal(resumed.next().image_u, batch.image_u)
    ahead.close()
    resumed.close()
    assert resumed.state() == plain.state()


def test_the_held_rate_enters_the_keys_only_when_set_and_is_range_checked(
        tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import yaml

    import benchmarks.config as config
    from benchmarks.config import load_profile, load_study
    from benchmarks.errors import ConfigError
    from benchmarks.plan import StudyPlan
    smoke = load_profile("smoke")
    off = StudyPlan(load_study("table2"), smoke, ["supervised"], data_dir=tiny_cohort, progress=False).cell("supervised", 0)
    assert "hold_fraction" not in off.resolved()["profile"]  # runs recorded before the field keep their keys
    held = dataclasses.replace(off, profile=dataclasses.replace(smoke, hold_fraction=0.7))
    assert held.run_key != off.run_key and held.training_key != off.training_key
    for value in (-0.1, 1.0, 0.02):  # 0.02 < the warm-up of 0.05
        raw = yaml.safe_load(config.PROFILES_FILE.read_text())
        raw["smoke"].update(hold_fraction=value, warmup_fraction=0.05)
        path = tmp_path / "profiles.yaml"
        path.write_text(yaml.safe_dump(raw))
        monkeypatch.setattr(config, "PROFILES_FILE", path)
        with pytest.raises(ConfigError, match=f"{path}:smoke: hold_fraction"):
            load_profile("smoke")
