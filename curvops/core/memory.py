"""Memory budgets by a fixed rule: a documented fraction of the device's available memory.

``available_bytes(device)``: CUDA ``torch.cuda.mem_get_info`` (free bytes on the device);
CPU ``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``os.sysconf`` free pages; None
where neither answers (then ``FALLBACK_MIB``). Read once, when an operator is built: the
budget does not follow later changes of the free memory.
"""

from __future__ import annotations

import os

import torch

AUTO_FRACTION = 0.25  # of the available memory, for each cache that asks (graphs, batches)
FALLBACK_MIB = 1024.0  # when the available memory cannot be read


def available_bytes(device: torch.device) -> int | None:
    """Bytes the device can still allocate now, or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    return _meminfo_available() or _sysconf_available()


def auto_budget_mib(device: torch.device) -> float:
    """``AUTO_FRACTION`` of the available memory in MiB (``FALLBACK_MIB`` if unknown)."""
    available = available_bytes(device)
    return FALLBACK_MIB if available is None else AUTO_FRACTION * available / 2**20


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None
