"""Speed targets, measured with pytest-benchmark (``make bench``); in ``make test`` each runs once.

Sizes are the ``cpu`` profile's: a V-Net (nf 16) train step on 2+2 crops of the profile's patch, sliding-window
inference of one 64x64x48 case, and the ``dhc`` metrics of one case.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.config import load_profile
from benchmarks.data import load_dataset
from benchmarks.data.sources import DATASETS_DIR
from benchmarks.data.synthetic import SyntheticAbdomen
from benchmarks.inference import sliding_window_probs
from benchmarks.metrics import PROTOCOLS, evaluate_case
from methods import Batch, get_method

PROFILE = load_profile("cpu")
AMOS = load_dataset(DATASETS_DIR / "amos")


def cpu_method(name: str):
    """``name`` configured as under the ``cpu`` profile (the profile overrides it has)."""
    cls = get_method(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    config = cls.Config(**{k: v for k, v in PROFILE.method_overrides.items() if k in fields})
    return cls(config, AMOS.num_classes, max_iterations=100, patch=PROFILE.patch, class_names=AMOS.class_names)


@pytest.mark.parametrize("name", ["supervised", "fully", "mean_teacher", "uamt", "cps", "desco", "cobionet", "cld",
                                  "crest", "simis", "adsh", "depl", "basak", "dhc", "and", "magicnet", "ga", "tak"])
def test_train_step(benchmark, name: str) -> None:
    """One training iteration at the ``cpu`` profile (TAK at an iteration where its contrast is on); when
    benchmarking, the FLOPs of one step (counted before the timed ones) go to extra_info."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    method = cpu_method(name)
    batch = Batch(torch.rand(2, 1, *PROFILE.patch), torch.randint(0, 16, (2, *PROFILE.patch)),
                  torch.rand(2, 1, *PROFILE.patch))
    benchmark.extra_info["patch"] = list(PROFILE.patch)
    if not benchmark.disabled:
        with FlopCounterMode(display=False) as counter:
            method.train_step(batch, 60)
        benchmark.extra_info["flops"] = counter.get_total_flops()
    logs = benchmark.pedantic(method.train_step, args=(batch, 60), rounds=5, warmup_rounds=1, iterations=1)
    assert np.isfinite(logs["loss"])


def test_vnet_train_step_throughput(benchmark) -> None:
    """A plain V-Net (the profile's width, BatchNorm) forward + backward + SGD step on 4 crops; the
    FLOPs go to extra_info and the summary compares the rate with the CPU's fp32 peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from methods.common.vnet import VNet
    torch.manual_seed(0)
    nf = PROFILE.method_overrides.get("base_filters", 16)
    net = VNet(1, AMOS.num_classes, nf, "batch", False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(4, 1, *PROFILE.patch)
    y = torch.randint(0, AMOS.num_classes, (4, *PROFILE.patch))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    with FlopCounterMode(display=False) as counter:
        step()
    benchmark.extra_info["flops"] = counter.get_total_flops()
    assert np.isfinite(benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1))


def test_sliding_window_case(benchmark) -> None:
    torch.manual_seed(0)
    method = cpu_method("supervised")
    image = torch.rand(1, 1, *PROFILE.cohort_shape)
    probs = benchmark.pedantic(sliding_window_probs, args=(image, method.predict, PROFILE.patch, PROFILE.eval_stride),
                               rounds=3, warmup_rounds=1, iterations=1)
    assert probs.shape == (1, 16, *PROFILE.cohort_shape)


def test_case_metrics(benchmark) -> None:
    _, gt, spacing = SyntheticAbdomen().generate(PROFILE.cohort_shape, 1)
    _, pred, _ = SyntheticAbdomen().generate(PROFILE.cohort_shape, 2)
    dices, asds = benchmark.pedantic(evaluate_case, args=(pred, gt, 16, PROTOCOLS["dhc"], spacing),
                                     rounds=5, warmup_rounds=1, iterations=1)
    assert dices.shape == asds.shape == (15,)
