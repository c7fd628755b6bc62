"""Seeded random vectors, drawn on the CPU and then moved: identical on every device and rank."""

from __future__ import annotations

import numpy as np
import torch

from curvops.interface import TorchMatmat


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def gaussian(A: TorchMatmat, k: int, seed: int) -> torch.Tensor:
    """(P, k) standard normal on ``A.device`` in ``A.dtype`` (drawn in float64 on the CPU)."""
    G = torch.randn(A.size, k, generator=_generator(seed), dtype=torch.float64)
    return G.to(device=A.device, dtype=A.dtype)


def rademacher(A: TorchMatmat, n: int, seed: int, chunk: int | None = None):
    """The first ``n`` ±1 probes of ``seed`` in chunks of (P, <= chunk) on ``A.device``.

    Each probe is its own CPU draw, so the probes do not depend on the chunk size.
    """
    gen, chunk = _generator(seed), chunk or n
    for lo in range(0, n, chunk):
        cols = [
            torch.randint(0, 2, (A.size,), generator=gen, dtype=torch.int8)
            for _ in range(min(chunk, n - lo))
        ]
        Z = torch.stack(cols, dim=1).to(torch.float64) * 2 - 1
        yield Z.to(device=A.device, dtype=A.dtype)


def start_vector(A: TorchMatmat, v0, seed: int) -> torch.Tensor:
    """The user's ``v0`` (numpy or torch, (P,) or (P, 1)) on ``A.device``, or a seeded
    Gaussian one; a complex, non-finite or zero ``v0`` is refused."""
    if v0 is None:
        return gaussian(A, 1, seed)[:, 0]
    v = torch.as_tensor(v0.detach() if isinstance(v0, torch.Tensor) else np.asarray(v0))
    if v.ndim not in (1, 2) or (v.ndim == 2 and v.shape[1] != 1) or v.shape[0] != A.size:
        raise ValueError(
            f"v0 has {v.numel()} entries (shape {tuple(v.shape)}); the operator has P = "
            f"{A.size}: pass a vector (P,)"
        )
    if v.is_complex():
        raise TypeError(f"v0 is complex ({v.dtype}); pass a real vector")
    v = v.reshape(-1).to(torch.float64)
    if not torch.isfinite(v).all() or not v.abs().max() > 0:
        raise ValueError("v0 must be a finite, nonzero vector")
    return v.to(device=A.device, dtype=A.dtype)
