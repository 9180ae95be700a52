"""``make bench`` ends with the ratios the speed targets are stated in, from this run's medians.

- TAK / GA and UA-MT / Mean Teacher: train-step medians (``test_train_step``), beside the ratios of
  their FLOPs; and all the train steps of the run together: FLOPs over summed medians, against the peak.
- V-Net throughput: FLOPs of one train step (``torch.utils.flop_counter``, 2 per multiply-add)
  over its median time, against this CPU's nominal fp32 peak: cores x clock x FLOPs per cycle
  (32 with AVX2 + FMA: two 256-bit FMA units; 64 with AVX-512), read from ``/proc/cpuinfo``.
"""
from __future__ import annotations

import os

import pytest

from benchmarks.training import cpu_flags, cpuinfo_values


def cpu_peak_gflops() -> tuple[float, str]:
    """Nominal fp32 peak of the cores this process may use, and how it was computed."""
    mhz = [float(value) for value in cpuinfo_values("cpu MHz")]
    if not mhz:
        return float("nan"), "unknown (no clock in /proc/cpuinfo)"
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0))
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= set(flags) else 16
    ghz = max(mhz) / 1000
    isa = "AVX-512" if per_cycle == 64 else "AVX2+FMA" if per_cycle == 32 else "SSE"
    return cores * ghz * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({isa})"


def _stats(bench):
    """pytest-benchmark's statistics of one benchmark (a ``Metadata`` wrapping ``Stats``, or ``Stats``)."""
    return getattr(bench.stats, "stats", bench.stats)


def _median(benchmarks: list, name: str) -> float | None:
    for bench in benchmarks:
        if bench.name == name and bench.stats is not None:
            return _stats(bench).median
    return None


def _flops(benchmarks: list, name: str) -> float | None:
    return next((b.extra_info.get("flops") for b in benchmarks if b.name == name and b.stats is not None), None)


def train_step_lines(benchmarks: list, peak_gflops: float) -> list[str]:
    """The two step-time ratios beside their FLOP ratios (a ratio of times stays above the ratio of
    FLOPs unless the larger step computes faster), and the rate of all the train steps of this run
    together (one iteration of every method measured) against the peak."""
    lines = []
    for label, num, den, target in (("TAK / GA train step", "tak", "ga", 1.3),
                                    ("UA-MT / Mean Teacher train step", "uamt", "mean_teacher", 2.0)):
        names = f"test_train_step[{num}]", f"test_train_step[{den}]"
        a, b = _median(benchmarks, names[0]), _median(benchmarks, names[1])
        if a and b:
            line = f"{label}: {a / b:.2f}x ({a:.3f} s / {b:.3f} s; target <= {target}x)"
            fa, fb = _flops(benchmarks, names[0]), _flops(benchmarks, names[1])
            if fa and fb:
                line += f"; FLOPs {fa / fb:.2f}x ({fa / 1e9:.1f} / {fb / 1e9:.1f} GFLOP)"
            lines.append(line)
    lines += cost_hint_lines(benchmarks)
    steps = [(_stats(b).median, b.extra_info["flops"]) for b in benchmarks
             if b.name.startswith("test_train_step[") and b.stats is not None and b.extra_info.get("flops")]
    if steps:
        seconds, flops = sum(t for t, _ in steps), sum(f for _, f in steps)
        rate = flops / seconds / 1e9
        lines.append(f"{len(steps)} train steps together: {flops / 1e9:.0f} GFLOP in {seconds:.1f} s = {rate:.1f} GFLOP/s "
                     f"= {100 * rate / peak_gflops:.0f} % of the fp32 peak")
    return lines


def cost_hint_lines(benchmarks: list, tolerance: float = 1.5) -> list[str]:
    """Methods whose measured step time over the supervised step's is off its ``relative_step_cost``
    (the local pool's scheduling hint) by more than ``tolerance``x either way: update the hint."""
    from methods.registry import get_method
    base = _median(benchmarks, "test_train_step[supervised]")
    lines = []
    for bench in benchmarks:
        if not base or not bench.name.startswith("test_train_step[") or bench.stats is None:
            continue
        name = bench.name[len("test_train_step["):-1]
        measured, hint = _stats(bench).median / base, get_method(name).relative_step_cost
        if not 1 / tolerance <= measured / hint <= tolerance and name != "fully":  # fully: 4 crops in a run, 2 here
            lines.append(f"relative_step_cost of {name}: {hint} in methods/, {measured:.1f} measured here")
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    benchmarks = session.benchmarks
    peak, how = cpu_peak_gflops()
    lines = train_step_lines(benchmarks, peak)
    vnet = next((b for b in benchmarks if b.name == "test_vnet_train_step_throughput" and b.stats), None)
    if vnet is not None:
        flops = vnet.extra_info["flops"]
        rate = flops / _stats(vnet).median / 1e9
        lines.append(f"V-Net train step: {rate:.1f} GFLOP/s = {100 * rate / peak:.0f} % of the fp32 peak "
                     f"{peak:.0f} GFLOP/s ({how}; target >= 50 %)")
    if lines:
        terminalreporter.write_sep("=", "speed ratios (this run's medians)")
        for line in lines:
            terminalreporter.write_line(line)
