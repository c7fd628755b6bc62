"""The run-time settings every command checks first: the device and the thread count."""

from __future__ import annotations

import torch


def prepare_runtime(device: str | None, threads: int | None) -> None:
    """Refuse ``--device cuda`` without CUDA (before any work); apply ``--threads``."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here")
    if threads:
        torch.set_num_threads(threads)
