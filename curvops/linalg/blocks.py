"""Per-block (layer-wise) top eigenvalues of a block-diagonal operator, and layer scores."""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse.linalg as sla
import torch

from curvops.interface import TorchMatmat, torch_matmat
from curvops.linalg.eigsh import eigsh
from curvops.linalg.results import BlockEigenvalues

DENSE_MAX = 32  # blocks up to this size: dense eigh of the block (one matmat of its columns)
ZERO_RTOL = 1e-12  # |λ_b| <= ZERO_RTOL · max_c |λ_c| counts as zero


def block_top_eigenvalues(
    op, normalize: bool = False, tol: float = 1e-6, backend: str = "lanczos"
) -> BlockEigenvalues:
    """Top eigenvalue λ_b = λ_max(A_bb) of each diagonal block, with its sign.

    ``op`` must expose ``block_slices`` (a curvops operator built with ``blocks=``); each
    block's products are A restricted to it: embed v_b in a zero P-vector, multiply, keep
    the block's slice (exact for a block-diagonal operator; for a full one this gives the
    diagonal blocks A_bb). Blocks of size <= 32 are solved densely, larger ones with
    ``eigsh(k=1, which="LM", backend=backend, tol=tol)``, plus a ``which="LA"`` run when
    that eigenvalue is negative. Also reports per block the eigenvalue of largest |λ|,
    with its sign.

    Scores: ``normalize=True`` gives |λ_b| / max_c |λ_c| in [0, 1] (else |λ_b|). A block
    whose λ_b is non-finite (the operator returned NaN / inf there) or zero (|λ_b| <=
    1e-12 · the largest |λ| of any block) gets status "non-finite" / "zero" and score
    NaN, and never sets the maximum.
    """
    slices = getattr(op, "block_slices", None)
    if slices is None:
        raise ValueError(
            "block_top_eigenvalues needs an operator with blocks (block_slices); build it "
            "with blocks='layer', e.g. HessianOperator(model, loss_fn, data, blocks='layer')"
        )
    names = list(getattr(op, "block_names", None) or [str(i) for i in range(len(slices))])
    A = torch_matmat(op)
    count0, start = A.n_matvecs, time.perf_counter()
    rows = [_extremes(_restrict(A, s), tol, backend) for s in slices]
    top, lm, conv = (np.asarray(x) for x in zip(*rows))
    statuses, scores = _scores(top, lm, normalize)
    return BlockEigenvalues(
        names=names,
        eigenvalues=top,
        largest_magnitude=lm,
        scores=scores,
        statuses=statuses,
        converged=conv.astype(bool),
        sizes=[s.stop - s.start for s in slices],
        normalized=normalize,
        n_matvecs=A.n_matvecs - count0,
        seconds=time.perf_counter() - start,
    )


def _restrict(A: TorchMatmat, s: slice) -> TorchMatmat:
    """M_b (n_b, k) -> (A [0; M_b; 0])[s]: the block's own products."""

    def fn(M: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(A.size, M.shape[1], dtype=A.dtype, device=A.device)
        full[s] = M
        return A(full)[s]

    return TorchMatmat(fn, s.stop - s.start, A.device, A.dtype)


def _extremes(B: TorchMatmat, tol: float, backend: str) -> tuple[float, float, bool]:
    """(λ_max, the eigenvalue of largest |λ|, converged) of one block; NaN if non-finite."""
    try:
        if B.size <= DENSE_MAX:
            lm, hi, converged = _dense_extremes(B)
        else:
            lm, hi, converged = _iterative_extremes(B, tol, backend)
    except (FloatingPointError, sla.ArpackError, np.linalg.LinAlgError):
        return np.nan, np.nan, False
    if not (np.isfinite(lm) and np.isfinite(hi)):
        return np.nan, np.nan, False
    return hi, lm, bool(converged)


def _dense_extremes(B: TorchMatmat) -> tuple[float, float, bool]:
    """(λ of largest |λ|, λ_max, True) from the dense block B I (one matmat of its columns)."""
    D = B(torch.eye(B.size, dtype=B.dtype, device=B.device)).to(torch.float64)
    if not bool(torch.isfinite(D).all()):
        raise FloatingPointError("the operator returned non-finite values (NaN or inf)")
    lo, hi = (float(x) for x in torch.linalg.eigvalsh((D + D.T) / 2)[[0, -1]])
    return (hi if abs(hi) >= abs(lo) else lo), hi, True


def _iterative_extremes(B: TorchMatmat, tol: float, backend: str) -> tuple[float, float, bool]:
    """λ of largest |λ| first (which="LM"); when it is negative, λ_max by a second "LA" run."""
    lm = eigsh(B, k=1, which="LM", tol=tol, backend=backend)
    if lm.eigenvalues[0] >= 0:
        return float(lm.eigenvalues[0]), float(lm.eigenvalues[0]), lm.all_converged
    la = eigsh(B, k=1, which="LA", tol=tol, backend=backend)
    return float(lm.eigenvalues[0]), float(la.eigenvalues[0]), lm.all_converged and la.all_converged


def _scores(top: np.ndarray, lm: np.ndarray, normalize: bool):
    """Statuses "ok" | "zero" | "non-finite" and scores |λ_b| (/ max over "ok" blocks)."""
    finite = np.isfinite(top)
    scale = np.abs(np.concatenate([top[finite], lm[finite]])).max(initial=0.0)
    zero = finite & (np.abs(np.where(finite, top, 0)) <= ZERO_RTOL * scale)
    ok = finite & ~zero
    statuses = ["non-finite" if not f else "zero" if z else "ok" for f, z in zip(finite, zero)]
    scores = np.where(ok, np.abs(np.where(finite, top, 0.0)), np.nan)
    if normalize and ok.any():
        scores = scores / np.nanmax(scores)
    return statuses, scores
