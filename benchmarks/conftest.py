"""Shared benchmark machinery (pytest-benchmark).

* ``OMKIT_BENCH_SMOKE=1`` shrinks every size so the suites run once, quickly,
  as tests (CI: ``make bench-smoke`` with ``--benchmark-disable``).
* On a GPU the timed function synchronises CUDA before it returns, so a round
  measures the kernels, not their launch.
* ``record_bandwidth`` puts bytes moved and the achieved GB/s in
  ``extra_info`` (after the run, from the mean time).
* ``OMKIT_BENCH_MAX_ROUNDS=N`` caps every benchmark's rounds (``make gpu-check``
  uses 5: a GPU's rounds vary little, and its window is short).
"""
from __future__ import annotations

import os
import platform

import pytest
import torch

SMOKE = os.environ.get("OMKIT_BENCH_SMOKE", "0") == "1"
MAX_ROUNDS = int(os.environ.get("OMKIT_BENCH_MAX_ROUNDS", "0")) or None
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_report_header(config):
    threads = torch.get_num_threads()
    return (f"omkit benchmarks: device={DEVICE} torch={torch.__version__} threads={threads} "
            f"cpu={platform.processor() or platform.machine()} smoke={SMOKE}")


def synchronized(fn):
    """fn, followed by a CUDA synchronisation when running on a GPU."""
    if DEVICE != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def run_benchmark(benchmark):
    """run_benchmark(fn, rounds, group=..., **extra): time fn (with a warm-up round),
    record the peak CUDA memory and anything in extra."""

    def run(fn, rounds=5, group=None, **extra):
        if group:
            benchmark.group = group
        benchmark.extra_info.update(extra)
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rounds = 1 if SMOKE else min(rounds, MAX_ROUNDS or rounds)
        result = benchmark.pedantic(synchronized(fn), rounds=rounds, warmup_rounds=0 if SMOKE else 1,
                                    iterations=1)
        if DEVICE == "cuda":
            benchmark.extra_info["peak_cuda_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return result

    return run


_copy_bandwidth: dict[str, float] = {}


def copy_bandwidth(device: str = DEVICE) -> float:
    """Measured copy bandwidth of this device in GB/s (bytes read + written per
    second by ``dst.copy_(src)`` of a 256 MiB buffer, best of 5): the practical
    ceiling the memory-bound kernels are compared against. Measured once per run."""
    if device not in _copy_bandwidth:
        import time

        n = (1 << 20) if SMOKE else (64 << 20)  # float32 elements: 4 MiB smoke, 256 MiB full
        src = torch.ones(n, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)  # first touch / allocation out of the timing
        best = float("inf")
        for _ in range(5):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            dst.copy_(src)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        _copy_bandwidth[device] = 2 * src.numel() * src.element_size() / best / 1e9
    return _copy_bandwidth[device]


def record_bandwidth(benchmark, nbytes: int) -> None:
    """Store bytes moved, GB/s (from the median time) and that rate as a share
    of the measured copy bandwidth in extra_info."""
    benchmark.extra_info["bytes_moved"] = int(nbytes)
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None) if stats is not None else None
    if median:
        rate = nbytes / median / 1e9
        ceiling = copy_bandwidth()
        benchmark.extra_info.update(gb_per_s=round(rate, 2), copy_gb_per_s=round(ceiling, 2),
                                    pct_of_copy_bandwidth=round(100 * rate / ceiling, 1))
