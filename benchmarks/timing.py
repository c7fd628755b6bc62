"""Interleaved median timing and a peak-memory probe."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    calls: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each call; every round runs each call once, in a rotating order.

    Interleaving keeps slow drifts of a shared machine out of the ratios taken in one run.
    """
    names = list(calls)
    for name in names:  # warm-up (lazy setup, allocator, vmap tracing)
        calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            calls[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


class PeakRss:
    """Samples this process's resident set in a thread (torch ops release the GIL): the peak
    above the level at entry, in MiB. A CPU proxy for a call's peak extra memory; run it in a
    fresh process with ``MALLOC_MMAP_THRESHOLD_`` set, so that freed blocks leave the RSS."""

    def __init__(self, interval: float = 2e-4) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.base = rss_mib()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib()) - self.base

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)


def peak_extra_mib(call: Callable[[], object], device: torch.device) -> float:
    """Peak memory of ``call()`` above what was held just before it, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact); CPU: ``PeakRss`` (a proxy).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with PeakRss() as probe:
        call()
    return probe.peak


def held_mib(device: torch.device) -> float:
    """Memory held now: allocated CUDA memory, or the resident set on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return rss_mib()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
