"""Random draws keyed by each data point's content: the Monte-Carlo Fisher's sampled labels.

Each data point n gets a 64-bit key from the seed and a checksum of its own inputs and
targets (its row of every tensor of the batch). A draw is a counter-based hash
(SplitMix64) of the key and the draw's position (sample m, then the point's own entries),
so the labels of a point do not depend on the other points of its batch, on the batch
order, on a shuffling DataLoader, or on the rank that holds it: the MC Fisher is one fixed
matrix under any batching of the same data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from curvops.core.data import Batch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_MUL1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MUL2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MUL1
    z = (z ^ _shr(z, 27)) * _MUL2
    return z ^ _shr(z, 31)


def _row_checksums(t: torch.Tensor, rows: int) -> torch.Tensor:
    """(B,) int64: one checksum per leading-axis row of ``t``, from the exact bits of its
    values: c_b = XOR_j mix(bits(t_bj) ^ mix(j)). Integer operations only, so the same on
    every device and under any summation order (a float sum's rounding would not be)."""
    flat = t.detach().reshape(rows, -1).to(torch.float64) + 0.0  # -0.0 -> 0.0: equal values
    n = flat.shape[1]
    position = _mix(torch.arange(n, device=flat.device, dtype=torch.int64))
    z = _mix(flat.view(torch.int64) ^ position)
    while z.shape[1] > 1:  # a pairwise XOR reduction: exact, order-free
        if z.shape[1] % 2:
            z = torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)
        half = z.shape[1] // 2
        z = z[:, :half] ^ z[:, half:]
    return z[:, 0] if n else torch.zeros(rows, dtype=torch.int64, device=flat.device)


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for k in sorted(obj) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def point_keys(seed: int, batch: Batch, device: torch.device) -> torch.Tensor:
    """(B,) int64 keys, one per data point, from ``seed`` and the point's own content."""
    keys = torch.full((batch.size,), int(seed), dtype=torch.int64, device=device)
    keys = _mix(keys)
    for t in _tensors(batch.X) + _tensors(batch.y):
        if t.ndim and t.shape[0] == batch.size:
            keys = _mix(keys ^ _row_checksums(t, batch.size).to(device))
    return keys


class PointSampler:
    """Uniform and Gaussian draws of shape (M, B, *rest), keyed per data point (axis 1)."""

    def __init__(self, seed: int, batch: Batch, device: torch.device) -> None:
        self.keys = point_keys(seed, batch, device)

    def uniform(self, shape: tuple[int, ...], dtype: torch.dtype, stream: int = 0) -> torch.Tensor:
        """U(0, 1) draws, never exactly 0 or 1; the same for a point whatever its batch."""
        M, B, rest = shape[0], shape[1], shape[2:]
        per = math.prod(rest)
        device = self.keys.device
        m = torch.arange(M, device=device, dtype=torch.int64).view(M, 1, 1)
        r = torch.arange(per, device=device, dtype=torch.int64).view(1, 1, per)
        counter = (m * per + r) * 4 + stream  # (M, 1, per): the draw's place within its point
        z = _mix(self.keys.view(1, B, 1) ^ _mix(counter))
        u = (_shr(z, 11).to(torch.float64) + 0.5) * 2.0**-53
        return u.reshape(M, B, *rest).to(dtype)

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """N(0, 1) draws by Box–Muller from two uniform streams."""
        u1 = self.uniform(shape, torch.float64, stream=1)
        u2 = self.uniform(shape, torch.float64, stream=2)
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)
