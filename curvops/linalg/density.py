"""Spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from curvops.core.checks import check_count
from curvops.interface import OperatorLike, torch_matmat
from curvops.linalg._checks import check_number, check_seed
from curvops.linalg._probes import rademacher
from curvops.linalg.lanczos import tridiagonalize
from curvops.linalg.results import Density

BASIS_BYTES = 2**29  # probes sharing one batched Lanczos run keep their bases under this


def spectral_density(
    op: OperatorLike,
    n_probes: int = 10,
    lanczos_steps: int = 80,
    grid: np.ndarray | Sequence[float] | None = None,
    sigma: float | None = None,
    n_grid: int = 1000,
    seed: int = 0,
) -> Density:
    """ρ(t) ≈ (1/n) Σ_probes Σ_j w_j N(t; θ_j, σ²), normalised so that ∫ ρ = 1 (trapezoid).

    Each probe z (Rademacher, the same stream as ``hutchinson_trace(seed=seed)``) starts
    ``lanczos_steps`` (at most P) Lanczos steps with full reorthogonalisation; the nodes θ_j
    are the Ritz values of T and the weights w_j the squared first components of its
    eigenvectors (Gauss quadrature of zᵀ f(A) z / ‖z‖²). Probes run together, one matmat
    of several columns per step. ``grid`` (default: ``n_grid`` points spanning the nodes
    with a margin of 5σ) and ``sigma`` (default: 1% of the nodes' range) set the Gaussian
    broadening. ∫ t ρ(t) dt equals the Hutchinson estimate of tr(A) / P with the same probes.
    A non-symmetric, complex or non-finite operator is refused as in ``eigsh``.
    """
    grid = _check(n_probes, lanczos_steps, grid, sigma, n_grid, seed)
    A = torch_matmat(op, algorithm="spectral_density")
    count0 = A.n_matvecs
    nodes, weights = _quadrature(A, n_probes, lanczos_steps, seed)
    sigma = float(sigma) if sigma is not None else _default_sigma(nodes)
    grid = _grid(nodes, sigma, n_grid) if grid is None else np.asarray(grid, dtype=float)
    rho = _broaden(grid, nodes, weights, sigma)
    return Density(grid, rho, nodes, weights, sigma, A.n_matvecs - count0)


def _check(n_probes, lanczos_steps, grid, sigma, n_grid, seed):
    """Validate the arguments; returns ``grid`` as a float64 array (or None)."""
    check_count("n_probes", n_probes, 1)
    check_count("lanczos_steps", lanczos_steps, 1)
    check_count("n_grid", n_grid, 2)
    check_seed(seed)
    if sigma is not None:
        check_number("sigma", sigma, strict=True)
    if grid is None:
        return None
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or not np.all(np.diff(grid) > 0):
        raise ValueError("grid must be an increasing 1-D array of at least 2 points")
    if not np.isfinite(grid).all():
        raise ValueError("grid must hold finite values only")
    return grid


def _quadrature(A, n_probes: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (n_probes, m), m = min(steps, P), probes batched under BASIS_BYTES."""
    m = min(steps, A.size)
    itemsize = torch.finfo(A.dtype).bits // 8
    chunk = max(1, BASIS_BYTES // ((m + 1) * A.size * itemsize))
    nodes, weights = [], []
    for i, Z in enumerate(rademacher(A, n_probes, seed, chunk)):
        for T in tridiagonalize(A, Z, m, seed=seed + i):
            theta, S = np.linalg.eigh((T + T.T) / 2)
            nodes.append(theta)
            weights.append(S[0] ** 2)
    return np.stack(nodes), np.stack(weights)


def _default_sigma(nodes: np.ndarray) -> float:
    width = float(nodes.max() - nodes.min())
    return 0.01 * width if width > 0 else 1e-3 * max(abs(float(nodes.max())), 1.0)


def _grid(nodes: np.ndarray, sigma: float, n: int) -> np.ndarray:
    return np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, n)


def _broaden(grid, nodes, weights, sigma) -> np.ndarray:
    """Σ_j w_j N(t; θ_j, σ²) averaged over probes, renormalised to ∫ = 1 on the grid."""
    rho = np.zeros_like(grid)
    for theta, w in zip(nodes, weights):  # probe by probe: (n_grid, m) at a time
        z = (grid[:, None] - theta[None, :]) / sigma
        rho += (np.exp(-0.5 * z**2) * w).sum(1)
    rho /= nodes.shape[0] * sigma * np.sqrt(2 * np.pi)
    total = np.trapezoid(rho, grid)
    return rho / total if total > 0 else rho
