"""Peak memory of one benchmarked call: host RSS sampled by a background
thread (the process-lifetime ru_maxrss cannot tell one benchmark from the
previous one), and the CUDA allocator's peak on a GPU."""
from __future__ import annotations

import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the lifetime peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.rss_mb`` (peak host RSS
    during the block, MiB), ``peak.rss_delta_mb`` (above the RSS at entry) and
    ``peak.cuda_mb`` (CUDA allocator peak, or None)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.rss_mb = self.rss_delta_mb = 0.0
        self.cuda_mb = None

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, current_rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._start = self._peak = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.cuda_mb = torch.cuda.max_memory_allocated() / 2**20
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, current_rss_bytes())
        self.rss_mb = self._peak / 2**20
        self.rss_delta_mb = (self._peak - self._start) / 2**20
        return False

    def as_extra_info(self) -> dict:
        info = {"peak_rss_mb": round(self.rss_mb, 1), "peak_rss_delta_mb": round(self.rss_delta_mb, 1)}
        if self.cuda_mb is not None:
            info["peak_cuda_mb"] = round(self.cuda_mb, 1)
        return info
