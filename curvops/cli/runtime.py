"""The run-time settings every command checks first: the device and the thread count.

The thread default (``--threads`` left out) is a rule, from ``benchmarks/threads.py``
(benchmarks/RESULTS.md, "CLI thread default"): one thread below ``SMALL_MODEL`` parameters,
where more threads never made a product faster and on a busy machine made it up to 30 times
slower; torch's default (one per core) from there on, where two threads made a product up
to 2.8 times faster on an idle machine.
"""

from __future__ import annotations

import torch
from torch import nn

SMALL_MODEL = 100_000  # parameters: below, one thread


def check_device(device: str | None) -> None:
    """Refuse ``--device cuda`` without CUDA, before any work."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here")


def default_threads(model: nn.Module) -> int:
    """1 for a model below SMALL_MODEL parameters, else torch's default."""
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 1 if size < SMALL_MODEL else torch.get_num_threads()


def set_threads(threads: int | None, model: nn.Module | None = None) -> int:
    """Apply ``--threads`` (or the default rule for ``model``); returns the count."""
    if threads is None and model is not None:
        threads = default_threads(model)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
