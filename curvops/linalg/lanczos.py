"""Lanczos in torch on the operator's device: tridiagonalisation and thick-restart eigensolver.

Full reorthogonalisation (classical Gram–Schmidt, twice) against the whole basis, so the
projected matrix T = Vᵀ A V is the true Rayleigh quotient also after a thick restart
(its arrowhead part is computed, not assumed). Only scalars and the small projected
matrix cross to the host; the (P, m) basis stays on the device.
"""

from __future__ import annotations

import numpy as np
import torch

from curvops.interface import TorchMatmat
from curvops.linalg._probes import gaussian


def _project_out(V: torch.Tensor, w: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w (P, b) minus its components on V[:j] (j, P, b), twice; returns (w, h (b, j))."""
    Vj = V[:j]
    h = torch.einsum("jpb,pb->bj", Vj, w)
    w = w - torch.einsum("jpb,bj->pb", Vj, h)
    h2 = torch.einsum("jpb,pb->bj", Vj, w)
    return w - torch.einsum("jpb,bj->pb", Vj, h2), h + h2


def _fresh_direction(A: TorchMatmat, V: torch.Tensor, j: int, seed: int) -> torch.Tensor:
    """A seeded unit vector per column, orthogonal to V[:j]: the restart after a breakdown."""
    w = gaussian(A, V.shape[2], seed)
    w, _ = _project_out(V, w, j)
    return w / w.norm(dim=0).clamp_min(torch.finfo(w.dtype).tiny)


def expand(
    A: TorchMatmat, V: torch.Tensor, T: torch.Tensor, start: int, stop: int, seed: int = 0
) -> None:
    """Lanczos steps j = start .. stop-1 for b independent bases at once, in place.

    V (m+1, P, b): V[:start+1] orthonormal per column b; T (b, m+1, m+1) float64 on the
    device. Afterwards A V[:stop] = V[:stop] T[:, :stop, :stop] + β V[stop] e_stopᵀ with
    β = T[:, stop, stop-1]. One matmat of b columns per step. An invariant subspace
    (β ≈ 0) continues with a fresh orthogonal direction and coupling 0.
    """
    P, eps = V.shape[1], torch.finfo(V.dtype).eps
    scale = torch.zeros(V.shape[2], dtype=torch.float64, device=V.device)
    for j in range(start, stop):
        w, h = _project_out(V, A(V[j]), j + 1)
        h = h.to(torch.float64)
        T[:, : j + 1, j] = h
        T[:, j, : j + 1] = h
        if j + 1 >= P:  # the basis spans everything: no next direction
            V[j + 1] = 0
            T[:, j + 1, j] = T[:, j, j + 1] = 0
            continue
        beta = w.norm(dim=0).to(torch.float64)
        scale = torch.maximum(scale, torch.maximum(h.abs().amax(dim=1), beta))
        bad = beta <= 100 * eps * scale
        if bool(bad.any()):
            w = torch.where(bad, _fresh_direction(A, V, j + 1, seed + 7919 * (j + 1)), w)
            beta = torch.where(bad, torch.zeros_like(beta), beta)
        V[j + 1] = w / torch.where(bad, torch.ones_like(beta), beta).to(w.dtype)
        T[:, j + 1, j] = T[:, j, j + 1] = beta


def tridiagonalize(A: TorchMatmat, V0: torch.Tensor, steps: int, seed: int = 0) -> np.ndarray:
    """``steps`` Lanczos steps from each column of V0 (P, b); returns T (b, m, m) float64.

    m = min(steps, P). T_b = V_bᵀ A V_b is the projected matrix of the b-th Krylov basis
    (tridiagonal up to round-off). Costs m matmats of b columns.
    """
    P, b = V0.shape
    m = min(steps, P)
    V = torch.zeros(m + 1, P, b, dtype=A.dtype, device=A.device)
    V[0] = V0 / V0.norm(dim=0)
    T = torch.zeros(b, m + 1, m + 1, dtype=torch.float64, device=A.device)
    expand(A, V, T, 0, m, seed)
    return T[:, :m, :m].cpu().numpy()


def select(theta: np.ndarray, n: int, which: str) -> np.ndarray:
    """Indices of the n wanted values of theta, best first; BE: n//2 bottom, the rest top."""
    order = {
        "LA": lambda: np.argsort(-theta, kind="stable"),
        "SA": lambda: np.argsort(theta, kind="stable"),
        "LM": lambda: np.argsort(-np.abs(theta), kind="stable"),
    }
    if which in order:
        return order[which]()[:n]
    top = np.argsort(-theta, kind="stable")[: n - n // 2]
    bottom = np.argsort(theta, kind="stable")[: n // 2]
    return np.concatenate([top, bottom])


def _ritz(T: torch.Tensor, m: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenpairs of the projected T[:m, :m] (float64, host) and the coupling β_m."""
    Tm = T[0, : m + 1, : m + 1].cpu().numpy()
    if not np.isfinite(Tm).all():
        raise FloatingPointError("the operator returned non-finite values (NaN or inf)")
    theta, S = np.linalg.eigh((Tm[:m, :m] + Tm[:m, :m].T) / 2)
    return theta, S, float(Tm[m, m - 1])


def thick_restart_lanczos(
    A: TorchMatmat,
    v0: torch.Tensor,
    k: int,
    which: str,
    tol: float,
    max_iter: int,
    ncv: int,
    seed: int = 0,
) -> tuple[np.ndarray, torch.Tensor, np.ndarray, float, torch.Tensor]:
    """k Ritz pairs by thick-restart Lanczos (Wu & Simon 2000).

    Basis of ncv vectors; at each restart keeps the k + (ncv − k)//2 best Ritz vectors.
    A pair is converged when its residual β_m |s_mi| <= tol · ‖A‖, with ‖A‖ estimated by
    the largest |Ritz value| seen. ``max_iter`` restart cycles at most. Returns
    (θ (k,), X (P, k) on the device, converged (k,), the ‖A‖ estimate, A X (P, k)), A X
    from the Lanczos relation A V = V T + β v_m e_mᵀ: X θ + β v_m s_mᵀ, no extra product.
    """
    m, P = ncv, A.size
    V = torch.zeros(m + 1, P, 1, dtype=A.dtype, device=A.device)
    V[0, :, 0] = v0 / v0.norm()
    T = torch.zeros(1, m + 1, m + 1, dtype=torch.float64, device=A.device)
    keep_n, p, anorm = min(k + (m - k) // 2, m - 1), 0, np.finfo(float).tiny
    for cycle in range(max_iter):
        expand(A, V, T, p, m, seed + cycle)
        theta, S, beta = _ritz(T, m)
        residual = np.abs(beta * S[m - 1])
        want = select(theta, k, which)
        anorm = max(anorm, np.abs(theta).max())
        converged = residual[want] <= tol * anorm
        if converged.all() or cycle == max_iter - 1:
            break
        keep = select(theta, keep_n, which)
        Sk = torch.as_tensor(S[:, keep], dtype=A.dtype, device=A.device)
        V[:keep_n, :, 0] = (V[:m, :, 0].T @ Sk).T
        V[keep_n] = V[m]
        V[keep_n + 1 :] = 0
        T.zero_()
        idx = torch.arange(keep_n, device=A.device)
        T[0, idx, idx] = torch.as_tensor(theta[keep], device=A.device)
        coupling = torch.as_tensor(beta * S[m - 1, keep], device=A.device)
        T[0, keep_n, :keep_n] = T[0, :keep_n, keep_n] = coupling
        p = keep_n
    Sw = torch.as_tensor(S[:, want], dtype=A.dtype, device=A.device)
    X = V[:m, :, 0].T @ Sw
    AX = X * torch.as_tensor(theta[want], dtype=A.dtype, device=A.device)
    AX += V[m] * torch.as_tensor(beta * S[m - 1, want], dtype=A.dtype, device=A.device)
    return theta[want], X, converged, anorm, AX
