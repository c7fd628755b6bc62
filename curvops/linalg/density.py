"""Spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019)."""

from __future__ import annotations

import numpy as np
import torch

from curvops.interface import torch_matmat
from curvops.linalg._probes import rademacher
from curvops.linalg.lanczos import tridiagonalize
from curvops.linalg.results import Density

BASIS_BYTES = 2**29  # probes sharing one batched Lanczos run keep their bases under this


def spectral_density(
    op,
    n_probes: int = 10,
    lanczos_steps: int = 80,
    grid=None,
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
    """
    if not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1; got {n_probes!r}")
    if not isinstance(lanczos_steps, (int, np.integer)) or lanczos_steps < 1:
        raise ValueError(f"lanczos_steps must be an integer >= 1; got {lanczos_steps!r}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be > 0; got {sigma!r}")
    if grid is None and n_grid < 2:
        raise ValueError(f"n_grid must be >= 2; got {n_grid!r}")
    if grid is not None:
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size < 2 or not np.all(np.diff(grid) > 0):
            raise ValueError("grid must be an increasing 1-D array of at least 2 points")
    A = torch_matmat(op)
    count0 = A.n_matvecs
    nodes, weights = _quadrature(A, n_probes, lanczos_steps, seed)
    sigma = float(sigma) if sigma is not None else _default_sigma(nodes)
    grid = _grid(nodes, sigma, n_grid) if grid is None else grid
    rho = _broaden(grid, nodes, weights, sigma)
    return Density(grid, rho, nodes, weights, sigma, A.n_matvecs - count0)


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
