"""Deflated power iteration, optionally with momentum, with a near-tie diagnosis.

Which solver to trust for what:

- Power iteration converges to the eigenvalue of largest MAGNITUDE |λ|, not the largest
  λ: on a Hessian with a large negative eigenvalue it returns that one. Its speed is the
  ratio |λ_2 / λ_1|; when |λ_1| ≈ |λ_2| (a near tie, or a ± pair λ, −λ) it stalls or
  oscillates, and here reports so (``near_tie``) instead of returning noise.
- ``eigsh(op, which="LA")`` (ARPACK or the Lanczos backend) is the solver for the largest
  algebraic eigenvalues and handles ± pairs and clusters; use it whenever accuracy matters.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from curvops.core.checks import check_count
from curvops.interface import OperatorLike, TorchMatmat, torch_matmat
from curvops.linalg._checks import check_number, check_seed
from curvops.linalg._probes import gaussian
from curvops.linalg.eigsh import ConvergenceWarning, with_progress
from curvops.linalg.results import PowerResult

TIE_RATIO = 0.9  # a stalled pair with |λ_2 / λ_1| or an observed rate above this is a tie


class NearTieWarning(ConvergenceWarning):
    """Power iteration met two eigenvalues of (nearly) equal magnitude at the top."""


def power_iteration(
    op: OperatorLike,
    k: int = 1,
    tol: float = 1e-6,
    max_iter: int = 200,
    momentum: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> PowerResult:
    """The k eigenpairs of largest |λ| by power iteration with Hotelling deflation.

    Pair i iterates on A_i = A − Σ_{j<i} λ_j u_j u_jᵀ: v ← A_i v − β v_prev (normalised,
    with v_prev rescaled by the same factor), the accelerated power method of De Sa et al.
    (2018); β = ``momentum`` (0: plain power iteration). The reported λ_i is the Rayleigh
    quotient u_iᵀ A u_i of the final vector, the TRUE eigenvalue (not λ − β, not the
    growth factor), and deflation uses it.

    Momentum: take β ≈ λ_2² / 4; it must stay below λ_1² / 4. For the deflated pairs
    β is rescaled by (λ_t / λ_1)², λ_t the current Rayleigh quotient, so that β < λ_i²/4.

    Convergence: ‖A_i v − λ v‖ <= tol · max|λ| within ``max_iter`` products per pair;
    ``residual_norms`` are recomputed with the true A at the end (one matmat).
    Returns a ``PowerResult`` sorted descending. A pair that stalls with another of
    nearly equal magnitude (a ± pair, or a convergence ratio above 0.9) is flagged in
    ``near_tie`` (with the two competing values in ``tie_values``) and a
    ``NearTieWarning`` is emitted; other non-convergence gives a ``ConvergenceWarning``.
    Power iteration finds the largest |λ|: for the largest λ, or ± pairs, use
    ``eigsh(op, which="LA")``. A non-symmetric, complex or non-finite operator is refused
    as in ``eigsh``. ``progress``: a tqdm bar counting products (stderr).
    """
    A = torch_matmat(op, algorithm="power_iteration")
    _check(A.size, k, tol, max_iter, momentum, seed)
    tol = max(float(tol), 50 * torch.finfo(A.dtype).eps)  # below: round-off, never met
    count0, start = A.n_matvecs, time.perf_counter()
    B, bar = with_progress(A, progress, "power_iteration")
    try:
        res = _pairs(B, k, tol, max_iter, momentum, seed)
    finally:
        if bar is not None:
            bar.close()
    res.n_matvecs, res.seconds = A.n_matvecs - count0, time.perf_counter() - start
    _warn(res, tol, max_iter)
    return res


def _pairs(A: TorchMatmat, k: int, tol: float, max_iter: int, momentum: float, seed: int):
    """The k deflated pairs, one after the other, and the result (unsorted counts)."""
    U = torch.zeros(A.size, 0, dtype=A.dtype, device=A.device)
    lams: list[float] = []
    info: list[tuple] = []
    for i in range(k):
        deflated = _deflated(A, U, lams)
        v = gaussian(A, 1, seed + i)[:, 0]
        lam, u, conv, ratio = _one_pair(deflated, v, tol, max_iter, momentum, lams)
        tie = _tie_values(deflated, u) if not conv else (np.nan, np.nan)
        lams.append(lam)
        U = torch.cat([U, u[:, None]], 1)
        info.append((conv, ratio, tie))
    return _result(A, U, info, tol, momentum)


def _check(P, k, tol, max_iter, momentum, seed) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k <= P:
        raise ValueError(f"k must be an integer with 0 < k <= P = {P}; got k={k!r}")
    check_number("tol", tol)
    check_count("max_iter", max_iter, 1)
    try:
        check_number("momentum", momentum)
    except ValueError as err:
        raise ValueError(f"{err} (take β ≈ λ_2²/4, or 0 for plain power iteration)") from None
    check_seed(seed)


def _deflated(A: TorchMatmat, U: torch.Tensor, lams: list[float]):
    """x -> (A − U diag(λ) Uᵀ) x for x (P,)."""
    lam = torch.as_tensor(lams, dtype=A.dtype, device=A.device)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return A(x) - U @ (lam * (U.T @ x))

    return apply


def _one_pair(apply, v, tol, max_iter, beta, lams):
    """Power iteration with momentum on ``apply``; returns (λ, u, converged, ratio)."""
    v = v / v.norm()
    prev = torch.zeros_like(v)
    lam1 = abs(lams[0]) if lams else None
    history = []
    converged = False
    for _ in range(max_iter):
        w = apply(v)
        lam = float(v @ w)
        r = float((w - lam * v).norm())
        history.append(r)
        scale = max([abs(lam)] + [abs(x) for x in lams] + [np.finfo(float).tiny])
        if r <= tol * scale:
            converged = True
            break
        b = beta if lam1 is None else beta * (lam / lam1) ** 2
        nxt = w - b * prev
        n = nxt.norm()
        if not float(n) > 0:
            break
        prev, v = v / n, nxt / n
    return lam, v, converged, _rate(history)


def _rate(history: list[float]) -> float:
    """Observed residual reduction per iteration over the last (up to) 20 iterations."""
    h = np.asarray(history[-21:])
    if h.size < 2 or h[0] <= 0:
        return 0.0
    return float((max(h[-1], 1e-300) / h[0]) ** (1 / (h.size - 1)))


def _tie_values(apply, u: torch.Tensor) -> tuple[float, float]:
    """The two Ritz values of largest |θ| on span{u, A u, A² u} (2 extra products)."""
    K = [u / u.norm()]
    for _ in range(2):
        K.append(apply(K[-1]))
    Q, Rr = torch.linalg.qr(torch.stack(K, 1).to(torch.float64))
    keep = Rr.diagonal().abs() > 1e-10 * Rr.diagonal().abs().max()
    Q = Q[:, keep]
    AQ = torch.stack([apply(q.to(u.dtype)) for q in Q.T], 1).to(torch.float64)
    H = (Q.T @ AQ).cpu().numpy()
    theta = np.linalg.eigvalsh((H + H.T) / 2)
    theta = theta[np.argsort(-np.abs(theta))]
    return (float(theta[0]), float(theta[1]) if theta.size > 1 else np.nan)


def _result(A: TorchMatmat, U, info, tol, momentum) -> PowerResult:
    AU = A(U)
    lam = (U * AU).sum(0) / (U * U).sum(0)
    res = (AU - U * lam).norm(dim=0).to(torch.float64).cpu().numpy()
    lam = lam.to(torch.float64).cpu().numpy()
    _, ratios, ties = (np.asarray(x) for x in zip(*info))
    scale = max(np.abs(lam).max(), np.finfo(float).tiny)
    conv = res <= 2 * tol * scale  # the final residual decides, as in eigsh
    tie_ratio = np.abs(ties[:, 1]) / np.abs(ties[:, 0])
    near_tie = ~conv & ((ratios > TIE_RATIO) | (np.nan_to_num(tie_ratio) > TIE_RATIO))
    ties[~near_tie] = np.nan
    order = np.argsort(-lam, kind="stable")
    return PowerResult(
        eigenvalues=lam[order],
        eigenvectors=U[:, torch.as_tensor(order.copy(), device=U.device)]
        .to(torch.float64)
        .cpu()
        .numpy(),
        residual_norms=res[order],
        converged=conv[order],
        n_matvecs=0,
        seconds=0.0,
        backend="power",
        which="LM",
        near_tie=near_tie[order],
        ratios=ratios[order],
        tie_values=ties[order],
        momentum=float(momentum),
    )


def _warn(res: PowerResult, tol: float, max_iter: int) -> None:
    for i in np.flatnonzero(res.near_tie):
        a, b = res.tie_values[i]
        warnings.warn(
            f"power_iteration: pair {i} (λ ≈ {res.eigenvalues[i]:.6g}) did not converge: two "
            f"eigenvalues of nearly equal magnitude compete at the top (≈ {a:.6g} and "
            f"{b:.6g}; observed convergence ratio {res.ratios[i]:.3f}). Power iteration "
            "finds the largest |λ| and cannot separate them (a ± pair or a near tie); use "
            "eigsh(op, which='LA') (Lanczos / ARPACK) instead.",
            NearTieWarning,
            stacklevel=3,
        )
    bad = ~res.converged & ~res.near_tie
    if bad.any():
        threshold = 2 * tol * max(np.abs(res.eigenvalues).max(), np.finfo(float).tiny)
        warnings.warn(
            f"power_iteration: {int(bad.sum())} of {len(res.converged)} pairs did not "
            f"converge in max_iter={max_iter} products each: the largest residual "
            f"‖Av − λv‖ = {res.residual_norms[bad].max():.3g} > 2·tol·max|λ| = "
            f"{threshold:.3g} (tol = {tol:g}). Increase max_iter, loosen tol, or use "
            "eigsh(op, which='LM') (Lanczos: fewer products for the same accuracy).",
            ConvergenceWarning,
            stacklevel=3,
        )
