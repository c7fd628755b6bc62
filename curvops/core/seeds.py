"""Seeds for Monte-Carlo labels that depend on the batch's content, not its position.

The same batch gets the same sampled labels whatever its order in the data, and on
whichever rank of a process group it lives: a sharded MC Fisher equals the single-process one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from curvops.core.data import Batch

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant for mixing
_MASK = (1 << 63) - 1


def batch_seed(seed: int, batch: Batch) -> int:
    """A 63-bit seed from ``seed`` and a checksum of the batch's inputs and targets."""
    h = (seed * _MIX + 1) & _MASK
    for t in _tensors(batch.X) + _tensors(batch.y):
        h = ((h ^ _checksum(t)) * _MIX) & _MASK
    return h


def sample_generator(seed: int, batch: Batch, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(batch_seed(seed, batch))


def _checksum(t: torch.Tensor) -> int:
    flat = t.detach().reshape(-1).to(torch.float64)
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
    weights = torch.cos(weights * 0.6180339887)  # break symmetry between entries
    value = float((flat * weights).sum()) + flat.numel()
    return int(abs(value) * 1e6) & _MASK


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for k in sorted(obj) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []
