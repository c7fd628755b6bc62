"""Directions for loss slices: top eigenvectors, random filter-normalised, or given ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

BIASES = ("zero", "keep")


def filter_normalized(
    params: Sequence[torch.Tensor], seed: int = 0, biases: str = "zero"
) -> torch.Tensor:
    """A random direction d (P,) scaled filter by filter (Li et al. 2018), float64 on the CPU.

    d ~ N(0, I) drawn per parameter on the CPU (seeded, device-independent); for a weight
    (ndim >= 2) each filter f (a row of a Linear, an output channel of a Conv: the slices
    along dim 0) is rescaled to the weight's own filter norm, d_f ← d_f · ‖θ_f‖ / ‖d_f‖.
    Parameters with ndim <= 1 (biases, norm-layer scales): ``biases="zero"`` sets d to 0
    there (Li et al.), ``"keep"`` treats the whole vector as one filter.
    """
    if biases not in BIASES:
        raise ValueError(f"biases must be one of {', '.join(map(repr, BIASES))}; got {biases!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    parts = []
    for p in params:
        theta = p.detach().to("cpu", torch.float64)
        d = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        if theta.ndim <= 1 and biases == "zero":
            parts.append(torch.zeros(theta.numel(), dtype=torch.float64))
            continue
        rows = theta.shape[0] if theta.ndim >= 2 else 1
        d_rows, theta_rows = d.reshape(rows, -1), theta.reshape(rows, -1)
        scale = theta_rows.norm(dim=1, keepdim=True) / d_rows.norm(dim=1, keepdim=True).clamp_min(
            torch.finfo(torch.float64).tiny
        )
        parts.append((d_rows * scale).reshape(-1))
    return torch.cat(parts)


def eigen_directions(source: Any, dims: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``dims`` eigenvectors (P, dims) of an EigenResult, or of a Report's top."""
    result = getattr(source, "top", source)
    vectors = np.asarray(getattr(result, "eigenvectors", np.zeros((0, 0))))
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(
            "the report / EigenResult holds no eigenvectors (a report loaded without "
            "eigenvectors.npz?): save it with vectors=True, or pass the vectors as an array"
        )
    if vectors.shape[1] < dims:
        raise ValueError(f"{dims} directions asked for, the result has {vectors.shape[1]} vectors")
    names = [f"$v_{i + 1}$" for i in range(dims)]
    return torch.as_tensor(vectors[:, :dims], dtype=torch.float64), names


def resolve(
    directions: Any, params: Sequence[torch.Tensor], dims: int | None, seed: int, biases: str
) -> tuple[torch.Tensor, str, list[str]]:
    """(D (P, d) float64 on the CPU, the kind, a name per direction) for ``landscape``."""
    P = sum(p.numel() for p in params)
    if isinstance(directions, str):
        if directions != "random":
            raise ValueError(
                f"directions must be 'random', a report, an EigenResult or an array; got {directions!r}"
            )
        n = _dims(dims or 1)
        D = torch.stack([filter_normalized(params, seed + i, biases) for i in range(n)], 1)
        return D, "random, filter-normalised", [f"$d_{i + 1}$" for i in range(n)]
    if hasattr(directions, "eigenvectors") or hasattr(directions, "top"):
        D, names = eigen_directions(directions, _dims(dims or 1))
        return _checked(D, P), "eigenvector", names
    D = torch.as_tensor(
        np.asarray(directions) if not isinstance(directions, torch.Tensor) else directions
    )
    D = D.detach().to("cpu", torch.float64)
    D = D.unsqueeze(1) if D.ndim == 1 else D
    if dims is not None and D.shape[1] != dims:
        raise ValueError(f"dims={dims} but {D.shape[1]} directions were given")
    _dims(D.shape[1])
    return _checked(D, P), "given", [f"$d_{i + 1}$" for i in range(D.shape[1])]


def _dims(n: int) -> int:
    if n not in (1, 2):
        raise ValueError(f"a landscape has 1 or 2 directions; got {n}")
    return n


def _checked(D: torch.Tensor, P: int) -> torch.Tensor:
    if D.ndim != 2 or D.shape[0] != P:
        raise ValueError(
            f"directions must have shape (P,) or (P, d) with P = {P}; got {tuple(D.shape)}"
        )
    if not bool(torch.isfinite(D).all()) or bool((D.norm(dim=0) == 0).any()):
        raise ValueError("every direction must be finite and non-zero")
    return D
