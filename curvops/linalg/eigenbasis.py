"""Eigenbases of symmetric matrices: robust eigh, warm-started QR refresh, sorting.

Every routine takes a dense symmetric torch tensor (n, n) or any operator (a curvops
operator, a scipy LinearOperator), the latter through ``curvops.linalg._matmat``.
Eigenvalues are returned in DESCENDING order, eigenvectors as the columns of Q (n, n).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvops.linalg._matmat import torch_matmat

EIGENBASIS_METHODS = ("eigh", "qr")


def _dense(A) -> torch.Tensor:
    """A as a dense (n, n) tensor (an operator is multiplied with the identity)."""
    if isinstance(A, torch.Tensor):
        _check_square(A)
        return A
    mm = torch_matmat(A)
    return mm(torch.eye(mm.size, device=mm.device, dtype=mm.dtype))


def _matmul(A, Q: torch.Tensor) -> torch.Tensor:
    """A @ Q for a dense A or an operator."""
    if isinstance(A, torch.Tensor):
        _check_square(A)
        return A @ Q.to(dtype=A.dtype)
    mm = torch_matmat(A)
    return mm(Q.to(device=mm.device, dtype=mm.dtype)).to(device=Q.device, dtype=Q.dtype)


def _check_square(A: torch.Tensor) -> None:
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"expected a square matrix (n, n), got shape {tuple(A.shape)}")


def eigh_with_fallback(A) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (n,) descending and eigenvectors Q (n, n) of a symmetric A = Q diag(λ) Qᵀ.

    ``torch.linalg.eigh`` in A's dtype first; if it fails (float32 on ill-conditioned
    factors) or returns non-finite values, retry in float64, then in float64 with a tiny
    diagonal shift; the result is cast back to A's dtype. Non-finite input raises.
    """
    A = _dense(A)
    if not bool(torch.isfinite(A).all()):
        raise FloatingPointError("eigh_with_fallback: the matrix holds NaN or inf")
    A = (A + A.T) / 2
    attempts = [lambda: A, lambda: A.double(), lambda: _shifted(A.double())]
    error: Exception | None = None
    for make in attempts:
        try:
            evals, evecs = torch.linalg.eigh(make())
        except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
            error = exc
            continue
        if bool(torch.isfinite(evals).all()) and bool(torch.isfinite(evecs).all()):
            if make is attempts[2]:
                evals = evals - _shift_size(A.double())
            return evals.flip(0).to(A.dtype), evecs.flip(1).to(A.dtype)
    raise RuntimeError(f"eigh failed in {A.dtype} and in float64: {error}")


def _shift_size(A: torch.Tensor) -> float:
    scale = float(A.abs().max()) or 1.0
    return scale * A.shape[0] * torch.finfo(torch.float64).eps


def _shifted(A: torch.Tensor) -> torch.Tensor:
    return A + _shift_size(A) * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)


def orthogonal_iteration(A, Q: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Warm-started subspace (QR) iteration: ``steps`` times Q <- qr(A Q).Q, signs fixed.

    Q: (n, m) with orthonormal columns (m <= n). Converges to the top-m eigenvectors by
    |λ| (for a PSD A: by λ); each step costs m products with A and one thin QR.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if Q.ndim != 2:
        raise ValueError(f"Q must be a matrix (n, m), got shape {tuple(Q.shape)}")
    for _ in range(steps):
        AQ = _matmul(A, Q)
        Qn, R = torch.linalg.qr(AQ)
        signs = torch.sign(torch.diagonal(R))
        signs[signs == 0] = 1
        Q = Qn * signs  # keep each column's orientation stable across steps
    return Q


def _index_state(state, order: torch.Tensor):
    if isinstance(state, tuple):
        tensor, dim = state
        return tensor.index_select(dim, order.to(tensor.device))
    return state.index_select(0, order.to(state.device))


def sort_by_approx_eigenvalues(A, Q: torch.Tensor, *state):
    """Sort the columns of Q by the diagonal of QᵀAQ, descending, and permute the state alike.

    Each ``state`` item is a tensor (permuted along axis 0) or a pair ``(tensor, dim)``
    (permuted along ``dim``), e.g. ``(E, 1)`` for EKFAC eigenvalues stored per column of
    the basis. Returns ``(values, Q_sorted, *state_sorted)`` with ``values`` = diag(QᵀAQ)
    sorted, so every per-direction quantity stays attached to its direction.
    """
    values = (Q * _matmul(A, Q)).sum(dim=0)
    order = torch.argsort(values, descending=True)
    sorted_state = [_index_state(s, order) for s in state]
    return (values[order], Q[:, order], *sorted_state)


def refresh_eigenbasis(
    As: Sequence,
    Qs: Sequence[torch.Tensor | None] | None = None,
    method: str = "eigh",
    steps: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(values, Q) for each symmetric A in ``As``, values descending.

    method "eigh": a full eigendecomposition (``eigh_with_fallback``; ``Qs`` ignored).
    method "qr": ``steps`` of ``orthogonal_iteration`` warm-started from the matching Q,
    then ``sort_by_approx_eigenvalues`` (values are the Rayleigh quotients diag(QᵀAQ));
    a missing Q (None) falls back to eigh.
    """
    if method not in EIGENBASIS_METHODS:
        raise ValueError(f"method must be one of {EIGENBASIS_METHODS}, got {method!r}")
    Qs = list(Qs) if Qs is not None else [None] * len(As)
    if len(Qs) != len(As):
        raise ValueError(f"got {len(As)} matrices but {len(Qs)} bases")
    out = []
    for A, Q in zip(As, Qs):
        if method == "eigh" or Q is None:
            out.append(eigh_with_fallback(A))
        else:
            Q = orthogonal_iteration(A, Q, steps)
            values, Q = sort_by_approx_eigenvalues(A, Q)
            out.append((values, Q))
    return out
