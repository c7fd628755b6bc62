"""Interleaved median timing and a peak-memory probe."""

from __future__ import annotations

import resource
import statistics
import sys
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


def peak_extra_mib(call: Callable[[], object], device: torch.device) -> tuple[float, bool]:
    """Peak memory of the first ``call()`` above what was held just before it, in MiB.

    Returns (MiB, exact). CUDA: ``torch.cuda.max_memory_allocated`` (exact). CPU: the
    process's peak resident set after the call (``ru_maxrss``) minus its resident set just
    before; a proxy that includes allocator slack. It is only a bound (exact=False) when
    the call did not raise the process's peak; run it in a fresh process with
    ``MALLOC_MMAP_THRESHOLD_`` set, so that freed blocks leave the resident set.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, True
    peak_before, now = _maxrss_mib(), _rss_mib()
    call()
    peak_after = _maxrss_mib()
    return peak_after - now, peak_after > peak_before


def _maxrss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20
