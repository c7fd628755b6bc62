"""``eigsh``: extreme eigenpairs of any symmetric LinearOperator, three backends."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
import torch

from curvops.core.checks import check_count
from curvops.interface import OperatorLike, TorchMatmat, torch_matmat
from curvops.linalg._checks import check_number, check_optional_count, check_seed
from curvops.linalg._probes import gaussian, start_vector
from curvops.linalg.lanczos import thick_restart_lanczos
from curvops.linalg.lobpcg import lobpcg
from curvops.linalg.results import EigenResult

WHICH = ("LA", "SA", "LM", "BE")
BACKENDS = ("arpack", "lanczos", "lobpcg")


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before every requested pair met the tolerance."""


def eigsh(
    op: OperatorLike,
    k: int = 6,
    which: str = "LA",
    tol: float = 1e-6,
    max_iter: int | None = None,
    backend: str = "lanczos",
    v0: np.ndarray | torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
    ncv: int | None = None,
    norm: float | None = None,
) -> EigenResult:
    """k eigenpairs of a symmetric operator A (P, P): A v_i = λ_i v_i.

    Parameters
    ----------
    op : LinearOperator, curvops operator, anything with ``torch_matmat`` / ``device`` /
        ``dtype`` / ``shape``, or a dense (P, P) numpy array / torch tensor.
    k : number of pairs, 0 < k < P.
    which : "LA" largest algebraic, "SA" smallest algebraic, "LM" largest magnitude,
        "BE" both ends (k//2 from the bottom, the rest from the top, as scipy).
    tol : relative tolerance: a pair is converged when ‖A v − λ v‖ <= tol · ‖A‖, ‖A‖
        estimated by the largest |Ritz value| the solver saw (ARPACK: the largest |λ_j|
        returned; its own test, per pair, is stricter). Floored at 50 machine epsilons of
        the operator's dtype; the recomputed residual is allowed a factor 2 of round-off
        over the solver's own estimate.
    max_iter : ARPACK restarts (scipy's default 10 P), Lanczos restart cycles (default
        300), or LOBPCG iterations (default 500).
    backend : "lanczos" (the default: thick-restart Lanczos in torch on the operator's
        device, no host copies; fewest products in benchmarks/RESULTS.md), "arpack"
        (scipy, host copies per product), "lobpcg" (block solver, one matmat on the
        unconverged columns per iteration).
    v0 : start vector (P,); overrides ``seed``, which draws a Gaussian one on the CPU.
    progress : a tqdm bar counting products.
    ncv : Krylov basis size (ARPACK, Lanczos; default min(P, max(2k + 1, 20))) or
        LOBPCG block size (default min(P, k + max(3, k // 2))).
    norm : a known estimate of ‖A‖ (e.g. λ_max from a top-k solve) to measure the
        tolerance against; the solver's own estimate (the largest |Ritz value| it saw) can
        be far below ‖A‖ in a bottom solve (which="SA") or an ARPACK solve of one pair.

    Returns
    -------
    EigenResult: eigenvalues (k,) descending, orthonormal eigenvectors (P, k), residual
    norms ‖A v − λ v‖, converged flags, n_matvecs, seconds. ARPACK's residuals are recomputed
    with one final matmat (k products); Lanczos and LOBPCG take A X from the products they
    made (the Lanczos relation, LOBPCG's tracked A X), which agrees with a recomputation to
    round-off for a symmetric operator, unless tol is within 100 machine epsilons, where
    they recompute too.

    Refused, never a silent wrong number: a non-symmetric operator (``NotSymmetricError``;
    checked once by ``curvops.interface.torch_matmat``, with one probe product of 2 columns
    not counted in ``n_matvecs`` unless ``op`` is a curvops operator or a dense matrix), a
    complex one (TypeError), NaN or inf in any product (FloatingPointError naming it).

    Non-convergence is never silent: the partial result is returned with ``converged``
    False where a pair missed the tolerance, and a ``ConvergenceWarning`` says how many
    pairs converged and what to try (larger max_iter, larger ncv, looser tol). ARPACK
    keeps only its converged pairs; the missing ones are NaN with zero vectors.
    Turn the warning into an error with ``warnings.simplefilter("error", ConvergenceWarning)``.
    """
    A = torch_matmat(op, algorithm=f"eigsh, backend {backend!r}")
    _check(A.size, k, which, backend, tol, max_iter, ncv, seed)
    if norm is not None:
        check_number("norm", norm)
    tol_eff = max(float(tol), 50 * torch.finfo(A.dtype).eps)
    count0, start = A.n_matvecs, time.perf_counter()
    B, bar = with_progress(A, progress, f"eigsh ({backend})")
    try:
        x0 = start_vector(B, v0, seed)
        vals, vecs, anorm, AX = _solve(B, x0, k, which, tol_eff, max_iter, ncv, seed, backend)
        if tol_eff < 100 * torch.finfo(A.dtype).eps:
            AX = None  # near round-off an implicit residual could under-report: recompute
        anorm = max(float(anorm), float(norm or 0.0))
        res = _finish(B, vals, vecs, anorm, tol_eff, backend, which, AX)
    finally:
        if bar is not None:
            bar.close()
    res.n_matvecs, res.seconds = A.n_matvecs - count0, time.perf_counter() - start
    if not res.all_converged:
        _warn(res, Settings(tol, tol_eff, anorm, norm, max_iter, ncv, str(A.dtype)))
    return res


def _check(P, k, which, backend, tol, max_iter, ncv, seed) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k < P:
        raise ValueError(
            f"k must be an integer with 0 < k < P = {P}; got k={k!r}. For the whole "
            "spectrum of a small operator use numpy.linalg.eigh(op @ numpy.eye(P))"
        )
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(map(repr, WHICH))}; got {which!r}")
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}"
        )
    check_number("tol", tol)
    check_optional_count("max_iter", max_iter, 1)
    if ncv is not None:
        check_count("ncv", ncv, 2)
        if not k < ncv <= P:
            raise ValueError(f"ncv must satisfy k < ncv <= P, here {k} < ncv <= {P}; got {ncv!r}")
    check_seed(seed)


def with_progress(A: TorchMatmat, progress: bool, name: str) -> tuple[TorchMatmat, Any]:
    """``A`` counting its products on a tqdm bar named ``name`` (and the bar), or ``A``."""
    if not progress:
        return A, None
    from tqdm.auto import tqdm

    bar = tqdm(desc=name, unit=" products")

    def fn(M):
        bar.update(M.shape[1])
        return A(M)

    return TorchMatmat(fn, A.size, A.device, A.dtype, symmetric=True, label=A.label), bar


def _solve(A, x0, k, which, tol, max_iter, ncv, seed, backend):
    """Backend dispatch: θ (k,) numpy, X (P, k) torch on the device, ‖A‖ estimate, and
    A X (P, k) when the backend has it without another product (else None)."""
    P = A.size
    if backend == "arpack":
        return (*_arpack(A, x0, k, which, tol, max_iter, ncv), None)
    if backend == "lanczos":
        m = ncv or min(P, max(2 * k + 1, 20))
        out = thick_restart_lanczos(A, x0, k, which, tol, max_iter or 300, m, seed)
        theta, X, _, anorm, AX = out
        return theta, X, anorm, AX
    nb = ncv or min(P, k + max(3, k // 2))
    X0 = gaussian(A, nb, seed)
    X0[:, 0] = x0
    theta, X, _, anorm, AX = lobpcg(A, X0, k, which, tol, max_iter or 500)
    return theta, X, anorm, AX


def _arpack(A: TorchMatmat, x0, k, which, tol, max_iter, ncv):
    def matmat(X):
        M = torch.as_tensor(np.asarray(X).reshape(A.size, -1), dtype=A.dtype, device=A.device)
        return A(M).to(torch.float64).cpu().numpy()

    lin = sla.LinearOperator(
        (A.size, A.size), matvec=matmat, matmat=matmat, rmatvec=matmat, dtype=np.float64
    )
    v0 = x0.to(torch.float64).cpu().numpy()
    which = "LA" if which == "BE" and k == 1 else which  # ARPACK's BE needs k >= 2
    try:
        vals, vecs = sla.eigsh(lin, k=k, which=which, tol=tol, maxiter=max_iter, v0=v0, ncv=ncv)
    except sla.ArpackNoConvergence as err:
        vals = np.full(k, np.nan)
        vecs = np.zeros((A.size, k))
        n = len(err.eigenvalues)
        vals[:n], vecs[:, :n] = err.eigenvalues, err.eigenvectors
    anorm = np.abs(vals[np.isfinite(vals)]).max(initial=0.0)
    return vals, torch.as_tensor(vecs, dtype=A.dtype, device=A.device), anorm


def _finish(A: TorchMatmat, vals, X, anorm, tol, backend, which, AX=None) -> EigenResult:
    """Sort descending, ‖A v − λ v‖ (from AX, or one matmat without it), decide convergence."""
    vals = np.asarray(vals, dtype=np.float64)
    order = np.argsort(-vals, kind="stable")  # NaN (missing pairs) last
    index = torch.as_tensor(order.copy(), device=X.device)
    vals, X = vals[order], X[:, index]
    lam = torch.as_tensor(vals, dtype=X.dtype, device=X.device)
    R = (A(X) if AX is None else AX[:, index]) - X * lam
    res = R.norm(dim=0).to(torch.float64).cpu().numpy()
    finite = np.isfinite(vals)
    scale = max(float(anorm), np.abs(vals[finite]).max(initial=0.0))
    converged = finite & (res <= 2 * tol * max(scale, np.finfo(float).tiny))
    return EigenResult(
        eigenvalues=vals,
        eigenvectors=X.to(torch.float64).cpu().numpy(),
        residual_norms=res,
        converged=converged,
        n_matvecs=0,
        seconds=0.0,
        backend=backend,
        which=which,
    )


@dataclass
class Settings:
    """What a convergence warning reports: the tolerances, ‖A‖ and the solver's limits."""

    tol: float
    tol_eff: float
    anorm: float
    norm: float | None
    max_iter: int | None
    ncv: int | None
    dtype: str


def _warn(res: EigenResult, s: Settings) -> None:
    """Which pairs missed which threshold, and what to change."""
    k, missed = len(res.eigenvalues), ~res.converged
    missing = int(np.isnan(res.eigenvalues).sum())
    warnings.warn(
        f"eigsh(backend={res.backend!r}, which={res.which!r}): {int(missed.sum())} of {k} "
        f"eigenpairs did not converge: {_missed(res, s, missing)}. Try a larger max_iter "
        f"(now {_now(s.max_iter)}), a larger ncv (now {_now(s.ncv)}) or a looser tol"
        + _norm_hint(res, s)
        + "; the partial result has converged=False where a pair did not converge.",
        ConvergenceWarning,
        stacklevel=3,
    )


def _missed(res: EigenResult, s: Settings, missing: int) -> str:
    """The largest residual against its threshold 2·tol·‖A‖, or the missing pairs."""
    floored = f" (asked {s.tol:g}; floor 50 eps of {s.dtype})" if s.tol_eff > s.tol else ""
    if missing == len(res.eigenvalues):
        return f"the solver returned none of them to tol = {s.tol_eff:g}{floored}"
    found = np.abs(res.eigenvalues[np.isfinite(res.eigenvalues)])
    threshold = 2 * s.tol_eff * max(s.anorm, float(found.max(initial=0.0)))
    late = res.residual_norms[~res.converged & np.isfinite(res.eigenvalues)]
    worst = f"the largest residual ‖Av − λv‖ = {late.max():.3g} > " if late.size else ""
    seen = "norm=" if s.norm else "the largest |Ritz value| the solver saw"
    gone = f"; {missing} pair(s) missing (NaN, zero vectors)" if missing else ""
    return (
        f"{worst}2·tol·‖A‖ = {threshold:.3g}, with tol = {s.tol_eff:g}{floored} and "
        f"‖A‖ ≈ {s.anorm:.3g} ({seen}){gone}"
    )


def _now(value: int | None) -> str:
    return "the default" if value is None else str(value)


def _norm_hint(res: EigenResult, s: Settings) -> str:
    """A bottom solve of LOBPCG or ARPACK (or ARPACK on one pair) estimates ‖A‖ from the
    Ritz values near what it finds, which can be far below ‖A‖."""
    small = res.which == "SA" and res.backend != "lanczos"
    small = small or (res.backend == "arpack" and len(res.eigenvalues) == 1)
    if s.norm or not small or np.isnan(res.eigenvalues).all():
        return ""
    return "; if ‖A‖ is larger than the solver saw, pass norm= (e.g. λ_max of a top solve)"
