"""Per-block (layer-wise) top eigenvalues of a block-diagonal operator, and layer scores."""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
import torch

from curvops.interface import TorchMatmat, probe_symmetry, torch_matmat
from curvops.linalg._checks import check_number
from curvops.linalg.eigsh import BACKENDS, ConvergenceWarning, eigsh
from curvops.linalg.lockstep import DENSE_MAX, dense_values, lockstep_extremes
from curvops.linalg.results import BlockEigenvalues

ZERO_RTOL = 1e-12  # |λ_b| <= ZERO_RTOL · max_c |λ_c| counts as zero


def block_top_eigenvalues(
    op: Any,
    normalize: bool = False,
    tol: float = 1e-6,
    backend: str = "lanczos",
    lockstep: bool | None = None,
) -> BlockEigenvalues:
    """Top eigenvalue λ_b = λ_max(A_bb) of each diagonal block, with its sign.

    ``op`` must expose ``block_slices`` (a curvops operator built with ``blocks=``); each
    block's products are A restricted to it: embed v_b in a zero P-vector, multiply, keep
    the block's slice (exact for a block-diagonal operator; for a full one this gives the
    diagonal blocks A_bb). Also reports per block the eigenvalue of largest |λ|, with its
    sign.

    Two ways, the same numbers (to ``tol``):
    - lock-step (``lockstep=None`` picks it for ``backend="lanczos"`` on an operator with
      ``is_block_diagonal`` true, as every curvops operator): one product advances every
      block (``curvops.linalg.lockstep``); blocks of size <= 32 are solved densely from
      their identity columns, which ride in the same products; a block stops once λ_max
      and its largest |λ| both converged to ``tol``. Products: those of the slowest block.
    - one solve per block (any other operator or backend, or ``lockstep=False``): blocks
      of size <= 32 densely (one matmat of their columns), larger ones with ``eigsh(k=1,
      which="LM", backend=backend, tol=tol)``, plus a ``which="LA"`` run when that
      eigenvalue is negative.
    ``lockstep=True`` on an operator that does not declare ``is_block_diagonal`` is refused
    (its products would mix blocks).

    Scores: ``normalize=True`` gives |λ_b| / max_c |λ_c| in [0, 1] (else |λ_b|). A block
    whose λ_b is non-finite (the operator returned NaN / inf there) or zero (|λ_b| <=
    1e-12 · the largest |λ| of any block) gets status "non-finite" / "zero" and score
    NaN, and never sets the maximum; a non-finite block also gives a RuntimeWarning that
    names it and the product. Each block must be symmetric (``NotSymmetricError``):
    curvops operators are by construction, a dense block (size <= 32) is compared with
    its transpose, a larger one probed once (one product of 2 columns, not counted; in
    lock-step one such product for all blocks).
    """
    slices = getattr(op, "block_slices", None)
    if slices is None:
        raise ValueError(
            "block_top_eigenvalues needs an operator with blocks (block_slices); build it "
            "with blocks='layer', e.g. HessianOperator(model, loss_fn, data, blocks='layer')"
        )
    check_number("tol", tol)
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}"
        )
    together = _lockstep_wanted(op, backend, lockstep)
    A = torch_matmat(op, check_symmetric=False, algorithm="block_top_eigenvalues")
    slices = [_check_slice(s, A.size, i) for i, s in enumerate(slices)]
    names = list(getattr(op, "block_names", None) or [str(i) for i in range(len(slices))])
    if len(names) != len(slices):
        raise ValueError(f"{len(names)} block_names for {len(slices)} block_slices")
    count0, start = A.n_matvecs, time.perf_counter()
    rows = None
    if together:
        try:
            rows = _lockstep_rows(A, slices, names, tol)
        except FloatingPointError:  # the operator refused a whole product: find the block
            rows = None
    if rows is None:
        rows = [_extremes(A, s, name, tol, backend) for s, name in zip(slices, names)]
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


def _lockstep_wanted(op, backend: str, lockstep: bool | None) -> bool:
    """The rule: lock-step for the Lanczos backend on a declared block-diagonal operator."""
    diagonal = bool(getattr(op, "is_block_diagonal", False))
    if lockstep and not diagonal:
        raise ValueError(
            "lockstep=True needs an operator whose products never couple two blocks "
            "(is_block_diagonal = True, as every curvops operator); this one does not say "
            "so: leave lockstep unset, or set op.is_block_diagonal = True if it is"
        )
    if lockstep is None:
        return diagonal and backend == "lanczos"
    return bool(lockstep)


def _lockstep_rows(A: TorchMatmat, slices: list[slice], names: list[str], tol: float):
    """(λ_max, largest |λ|, converged) per block from one lock-step run."""
    tol_eff = max(float(tol), 50 * torch.finfo(A.dtype).eps)
    rows, missed = [], []
    for outcome, name in zip(lockstep_extremes(A, slices, tol_eff), names):
        if isinstance(outcome, str):
            warnings.warn(
                f"block {name!r} gets status 'non-finite': {outcome}", RuntimeWarning, stacklevel=3
            )
            rows.append((np.nan, np.nan, False))
            continue
        lm, hi, converged = outcome
        missed += [] if converged else [name]
        rows.append((hi, lm, converged))
    if missed:
        warnings.warn(
            f"block_top_eigenvalues: {len(missed)} block(s) did not converge to tol={tol:g} "
            f"in 300 restart cycles: {', '.join(missed)}; their values are the last Ritz "
            "values (converged=False)",
            ConvergenceWarning,
            stacklevel=3,
        )
    return rows


def _check_slice(s, P: int, i: int) -> slice:
    """block_slices[i] as a non-empty slice(start, stop) within [0, P)."""
    ok = isinstance(s, slice) and s.step in (None, 1)
    ok = ok and all(isinstance(x, (int, np.integer)) for x in (s.start, s.stop))
    if not (ok and 0 <= s.start < s.stop <= P):
        raise ValueError(
            f"block_slices[{i}] = {s!r} is not a non-empty slice(start, stop) within [0, P = {P})"
        )
    return slice(int(s.start), int(s.stop))


def _restrict(A: TorchMatmat, s: slice, name: str, count: bool = True) -> TorchMatmat:
    """M_b (n_b, k) -> (A [0; M_b; 0])[s]: the block's own products, counted in A's
    ``n_matvecs`` unless ``count=False`` (the symmetry probe). Only the block's slice of
    each product is checked (NaN elsewhere belongs to another block)."""

    def fn(M: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(A.size, M.shape[1], dtype=A.dtype, device=A.device)
        full[s] = M
        A.n_matvecs += M.shape[1] if count else 0
        A.n_calls += 1
        return A.fn(full)[s]

    label = f"{A.label}, block {name!r}"
    return TorchMatmat(fn, s.stop - s.start, A.device, A.dtype, symmetric=A.symmetric, label=label)


def _extremes(A: TorchMatmat, s: slice, name: str, tol: float, backend: str):
    """(λ_max, the eigenvalue of largest |λ|, converged) of one block; NaN if non-finite
    (with a warning naming the block and the product). A non-symmetric block raises."""
    B = _restrict(A, s, name)
    try:
        if B.size <= DENSE_MAX:
            lm, hi, converged = _dense_extremes(B)
        else:
            probe_symmetry(_restrict(A, s, name, count=False))
            B.symmetric = True
            lm, hi, converged = _iterative_extremes(B, tol, backend)
    except (FloatingPointError, sla.ArpackError, np.linalg.LinAlgError) as err:
        warnings.warn(
            f"block {name!r} gets status 'non-finite': {err}", RuntimeWarning, stacklevel=3
        )
        return np.nan, np.nan, False
    if not (np.isfinite(lm) and np.isfinite(hi)):
        return np.nan, np.nan, False
    return hi, lm, bool(converged)


def _dense_extremes(B: TorchMatmat) -> tuple[float, float, bool]:
    """(λ of largest |λ|, λ_max, True) from the dense block B I (one matmat of its columns),
    checked symmetric to round-off unless B is symmetric by construction."""
    D = B(torch.eye(B.size, dtype=B.dtype, device=B.device))
    return dense_values(D, B.symmetric, B.dtype, B.label)


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
