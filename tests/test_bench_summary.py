"""The ratios ``make bench`` ends with (``tests/bench/conftest.py``), on benchmark records made here."""
from __future__ import annotations

from types import SimpleNamespace

from bench.conftest import cost_hint_lines, train_step_lines


def record(name: str, median_s: float, flops: float | None = None) -> SimpleNamespace:
    """The fields of a pytest-benchmark record that the summary reads."""
    return SimpleNamespace(name=f"test_train_step[{name}]", stats=SimpleNamespace(median=median_s),
                           extra_info={} if flops is None else {"flops": flops})


def test_step_ratios_come_with_their_flop_ratios_and_the_steps_rate() -> None:
    runs = [record("ga", 1.0, 90e9), record("tak", 1.5, 100e9), record("mean_teacher", 0.5, 40e9),
            record("uamt", 1.2, 80e9)]
    tak, uamt, together = train_step_lines(runs, peak_gflops=155.0)
    assert tak.startswith("TAK / GA train step: 1.50x") and tak.endswith("FLOPs 1.11x (100.0 / 90.0 GFLOP)")
    assert uamt.startswith("UA-MT / Mean Teacher train step: 2.40x") and "FLOPs 2.00x" in uamt
    assert together == "4 train steps together: 310 GFLOP in 4.2 s = 73.8 GFLOP/s = 48 % of the fp32 peak"


def test_without_counted_flops_only_the_step_ratios_are_shown() -> None:
    lines = train_step_lines([record("ga", 1.0), record("tak", 1.3)], peak_gflops=155.0)
    assert lines == ["TAK / GA train step: 1.30x (1.300 s / 1.000 s; target <= 1.3x)"]


def test_a_step_cost_hint_far_from_the_measured_ratio_is_named() -> None:
    """TAK's hint is 7.4 supervised steps: 7.0 measured is within 1.5x and silent, 2.0 is named;
    without a supervised step there is nothing to compare."""
    close = [record("supervised", 0.2), record("tak", 1.4)]
    assert train_step_lines(close, peak_gflops=155.0) == []
    far = [record("supervised", 0.2), record("tak", 0.4)]
    assert train_step_lines(far, peak_gflops=155.0) == ["relative_step_cost of tak: 7.4 in methods/, 2.0 measured here"]
    assert cost_hint_lines([record("tak", 0.4)]) == []
