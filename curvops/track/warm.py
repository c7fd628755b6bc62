"""Warm-started top-k eigenpairs: each solve starts from the previous measurement's Ritz vectors.

Two starts, both ending in the convergence test of ``curvops.eigsh`` (‖A v − λ v‖ <= tol · ‖A‖):

- "lanczos" (the default): thick-restart Lanczos from v0 = Σ_i u_i / √k + f g, the previous
  Ritz vectors U (P, k) summed, plus a seeded Gaussian unit direction g of weight f that
  keeps eigenvalues entering the top k from outside the old subspace reachable; basis
  ncv = k + max(5, k // 2). One product per Krylov direction.
- "lobpcg": a block start, LOBPCG from [U, G] with G ``extra`` fresh Gaussian columns, all
  k + extra columns to convergence; one matmat on the unconverged columns per iteration.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from curvops.interface import OperatorLike, TorchMatmat, torch_matmat
from curvops.linalg import ConvergenceWarning, EigenResult, eigsh
from curvops.linalg.lanczos import select
from curvops.linalg.lobpcg import lobpcg

WARM_METHODS = ("lanczos", "lobpcg")


def warm_eigsh(
    op: OperatorLike,
    k: int,
    previous: np.ndarray | None,
    which: str = "LA",
    tol: float = 1e-4,
    method: str = "lanczos",
    fresh: float = 0.25,
    extra: int = 3,
    seed: int = 0,
    ncv: int | None = None,
    max_iter: int | None = None,
) -> EigenResult:
    """k eigenpairs of ``op`` (P, P), started from ``previous`` (P, k) orthonormal, or cold.

    Cold (``previous`` None): ``curvops.eigsh(op, k, which, tol)``, Lanczos at its defaults.
    Warm: ``method`` "lanczos" or "lobpcg" as in the module docstring. Same tolerance and
    convergence test as the cold solve; residuals ‖A v − λ v‖ from the products made (the
    Lanczos relation, LOBPCG's tracked A X), recomputed when tol is within 100 machine
    epsilons. ``n_matvecs`` counts every product of this call.
    """
    if method not in WARM_METHODS:
        raise ValueError(f"method must be one of {WARM_METHODS}; got {method!r}")
    if previous is None:
        return eigsh(op, k=k, which=which, tol=tol, seed=seed, max_iter=max_iter)
    A = torch_matmat(op, algorithm=f"warm eigsh ({method})")
    U = _previous_block(A, previous, k)
    if method == "lanczos":
        v0 = U.sum(1) / np.sqrt(k) + fresh * _unit_gaussian(A, 1, seed)[:, 0]
        m = ncv or min(A.size, k + max(5, k // 2))
        return eigsh(A, k=k, which=which, tol=tol, v0=v0, ncv=m, max_iter=max_iter, seed=seed)
    return _block_start(A, U, k, which, tol, extra, seed, max_iter or 500)


def _previous_block(A: TorchMatmat, previous, k: int) -> torch.Tensor:
    U = torch.as_tensor(np.asarray(previous), dtype=A.dtype, device=A.device)
    if U.ndim != 2 or U.shape[0] != A.size or U.shape[1] != k:
        raise ValueError(f"previous must have shape ({A.size}, {k}); got {tuple(U.shape)}")
    if not bool(torch.isfinite(U).all()):
        raise ValueError("previous holds NaN or inf: start cold (previous=None)")
    return U


def _unit_gaussian(A: TorchMatmat, n: int, seed: int) -> torch.Tensor:
    """(P, n) seeded Gaussian columns of unit norm (drawn on the CPU in float64)."""
    G = torch.randn(A.size, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (G / G.norm(dim=0)).to(device=A.device, dtype=A.dtype)


def _block_start(A, U, k, which, tol, extra, seed, max_iter) -> EigenResult:
    """LOBPCG from [U, extra fresh columns], every column to convergence (an old eigenvector
    that is still one converges at once; the fresh columns must too, so that an eigenvalue
    entering the top k from outside range(U) is found); then the k wanted, as eigsh."""
    tol_eff = max(float(tol), 50 * torch.finfo(A.dtype).eps)
    extra = max(0, min(extra, A.size - k))
    X0 = torch.cat([U, _unit_gaussian(A, extra, seed)], 1)
    count0, start = A.n_matvecs, time.perf_counter()
    theta, X, _, anorm, AX = lobpcg(A, X0, k + extra, which, tol_eff, max_iter)
    keep = torch.as_tensor(select(np.asarray(theta), k, which).copy(), device=X.device)
    theta, X, AX = np.asarray(theta)[keep.cpu().numpy()], X[:, keep], AX[:, keep]
    if tol_eff < 100 * torch.finfo(A.dtype).eps:
        AX = A(X)  # near round-off the tracked A X could under-report: recompute
    res = _finish(theta, X, AX, anorm, tol_eff, which)
    res.n_matvecs, res.seconds = A.n_matvecs - count0, time.perf_counter() - start
    if not res.all_converged:
        warnings.warn(
            f"warm LOBPCG: only {int(res.converged.sum())} of {k} eigenpairs converged to "
            f"tol={tol:g}; try a larger max_iter (now {max_iter}) or a looser tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return res


def _finish(theta, X, AX, anorm, tol, which) -> EigenResult:
    """Descending order, ‖A v − λ v‖ from AX, converged <= 2 tol · max(‖A‖ est., max |λ|)."""
    order = np.argsort(-np.asarray(theta, dtype=np.float64), kind="stable")
    vals = np.asarray(theta, dtype=np.float64)[order]
    idx = torch.as_tensor(order.copy(), device=X.device)
    X, AX = X[:, idx], AX[:, idx]
    R = AX - X * torch.as_tensor(vals, dtype=X.dtype, device=X.device)
    res = R.norm(dim=0).to(torch.float64).cpu().numpy()
    scale = max(float(anorm), float(np.abs(vals).max(initial=0.0)), np.finfo(float).tiny)
    return EigenResult(
        eigenvalues=vals,
        eigenvectors=X.to(torch.float64).cpu().numpy(),
        residual_norms=res,
        converged=res <= 2 * tol * scale,
        n_matvecs=0,
        seconds=0.0,
        backend="lobpcg",
        which=which,
    )


def recompute_residuals(op: OperatorLike, res: EigenResult, tol: float) -> int:
    """‖A v − λ v‖ of ``res`` from one fresh k-column product, in place; ``converged``
    re-tested as ‖A v − λ v‖ <= 2 tol · max |λ| (at least as strict as the solver's test,
    whose scale also takes its ‖A‖ estimate). Returns the products used (k)."""
    A = torch_matmat(op, algorithm="residual check")
    V = torch.as_tensor(res.eigenvectors, dtype=A.dtype, device=A.device)
    lam = torch.as_tensor(res.eigenvalues, dtype=A.dtype, device=A.device)
    res.residual_norms = (A(V) - V * lam).norm(dim=0).to(torch.float64).cpu().numpy()
    tol_eff = max(float(tol), 50 * torch.finfo(A.dtype).eps)
    scale = max(float(np.abs(res.eigenvalues).max(initial=0.0)), np.finfo(float).tiny)
    res.converged = np.asarray(res.converged) & (res.residual_norms <= 2 * tol_eff * scale)
    return V.shape[1]


def subspace_cosines(U_prev: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between range(U_prev) and range(U), both (P, k)
    orthonormal: the singular values of U_prevᵀ U, descending, in [0, 1]."""
    s = np.linalg.svd(np.asarray(U_prev).T @ np.asarray(U), compute_uv=False)
    return np.clip(s, 0.0, 1.0)


def gradient_fraction(U: np.ndarray, g: np.ndarray) -> float:
    """‖Uᵀ g‖ / ‖g‖ for U (P, k) orthonormal: the share of g's norm in range(U)."""
    norm = float(np.linalg.norm(g))
    return float(np.linalg.norm(np.asarray(U).T @ g) / norm) if norm > 0 else float("nan")
