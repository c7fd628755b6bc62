"""Block eigensolver: LOBPCG with soft locking and a float64 Rayleigh–Ritz.

Search space S = [X, P, W] (iterates, previous directions, residuals of the unconverged
columns), kept orthonormal explicitly (Gram–Schmidt twice + SVQB, dropping dependent
directions), so the Rayleigh–Ritz is a plain symmetric eigenproblem Sᵀ A S in float64.
The new P is built in coefficient space, orthogonal to the new X (Hetmaniuk & Lehoucq
2006; Duersch et al. 2018). One matmat per iteration on the unconverged columns only.
"""

from __future__ import annotations

import numpy as np
import torch

from curvops.interface import TorchMatmat
from curvops.linalg.lanczos import select


def _orthonormalize(W: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """Columns of W made orthonormal and orthogonal to ``basis``; dependent ones dropped."""
    for _ in range(2):
        for B in basis:
            if B.shape[1]:
                W = W - B @ (B.T @ W)
        if W.shape[1] == 0:
            return W
        G = (W.T @ W).to(torch.float64)
        d, U = torch.linalg.eigh((G + G.T) / 2)
        keep = d > d.max().clamp_min(0) * (W.shape[0] * torch.finfo(W.dtype).eps) ** 1.5
        if not bool(keep.any()):
            return W[:, :0]
        W = W @ (U[:, keep] / d[keep].sqrt()).to(W.dtype)
    return W


def _complement(Y: np.ndarray, nx: int) -> np.ndarray:
    """Orthonormal coefficients of the new P: Y's non-X rows, orthogonalised against Y."""
    Z = Y.copy()
    Z[:nx] = 0
    for _ in range(2):
        Z -= Y @ (Y.T @ Z)
    if Z.shape[1] == 0:
        return Z
    U, s, _ = np.linalg.svd(Z, full_matrices=False)
    return U[:, s > max(s.max(), 1e-300) * 1e-10] if s.size else Z


def _rayleigh_ritz(S, AS, nb, which):
    """Best nb Ritz pairs of S (orthonormal) by ``which`` (float64, host), and max |θ|."""
    G = (S.T @ AS).to(torch.float64).cpu().numpy()
    if not np.isfinite(G).all():
        raise FloatingPointError("the operator returned non-finite values (NaN or inf)")
    theta, C = np.linalg.eigh((G + G.T) / 2)
    sel = select(theta, nb, which)
    return theta[sel], C[:, sel], np.abs(theta).max()


def _wanted(nb: int, k: int, which: str) -> np.ndarray:
    """Positions of the k wanted pairs among the nb ordered by ``select`` (BE: two runs)."""
    if which != "BE":
        return np.arange(k)
    top = nb - nb // 2
    return np.concatenate([np.arange(k - k // 2), top + np.arange(k // 2)])


def lobpcg(
    A: TorchMatmat,
    X0: torch.Tensor,
    k: int,
    which: str,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, torch.Tensor, np.ndarray, float, torch.Tensor]:
    """k wanted pairs of A from the block X0 (P, b), b >= k, by LOBPCG.

    Converged: ‖A x − θ x‖ <= tol · ‖A‖, ‖A‖ estimated by the largest |Ritz value| seen.
    Returns (θ (k,), X (P, k), converged (k,), the ‖A‖ estimate, A X (P, k) as tracked).
    """
    X = _orthonormalize(X0, [])
    AX = A(X)
    nb = X.shape[1]
    want = _wanted(nb, k, which)
    theta, C, anorm = _rayleigh_ritz(X, AX, nb, which)
    Cd = torch.as_tensor(C, dtype=A.dtype, device=A.device)
    X, AX = X @ Cd, AX @ Cd
    Pd = APd = X[:, :0]
    for _ in range(max_iter):
        R = AX - X * torch.as_tensor(theta, dtype=A.dtype, device=A.device)
        res = R.norm(dim=0).to(torch.float64).cpu().numpy()
        active = res > tol * max(anorm, np.finfo(float).tiny)
        if not active[want].any():
            break
        W = _orthonormalize(R[:, active], [X, Pd])
        if W.shape[1] == 0:
            break
        S, AS = torch.cat([X, Pd, W], 1), torch.cat([AX, APd, A(W)], 1)
        theta, Y, top = _rayleigh_ritz(S, AS, nb, which)
        anorm = max(anorm, top)
        Z = _complement(Y, nb)
        Yd = torch.as_tensor(Y, dtype=A.dtype, device=A.device)
        Zd = torch.as_tensor(Z, dtype=A.dtype, device=A.device)
        X, AX, Pd, APd = S @ Yd, AS @ Yd, S @ Zd, AS @ Zd
    theta_w, Xw = theta[want], X[:, want]
    R = AX[:, want] - Xw * torch.as_tensor(theta_w, dtype=A.dtype, device=A.device)
    res = R.norm(dim=0).to(torch.float64).cpu().numpy()
    converged = res <= tol * max(anorm, np.finfo(float).tiny)
    return theta_w, Xw, converged, anorm, AX[:, want]
