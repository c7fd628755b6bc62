"""Dense symmetric eigen-routines in torch, with no dependency on the rest of curvops.

``A`` is a dense symmetric (n, n) tensor or a function ``Q (n, m) -> A Q``. Eigenvalues come
in DESCENDING order, eigenvectors as the columns of Q (n, n). Operators (EKFAC) take their
eigenbases from here; ``curvops.linalg.eigenbasis`` offers the same on any LinearOperator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Matmul = Callable[[torch.Tensor], torch.Tensor]


def check_square(A: torch.Tensor) -> None:
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"expected a square matrix (n, n), got shape {tuple(A.shape)}")


def eigh_with_fallback(
    A: torch.Tensor, symmetrize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (n,) descending and eigenvectors Q (n, n) of a symmetric A = Q diag(λ) Qᵀ.

    ``torch.linalg.eigh`` in A's dtype first; if it fails (float32 on ill-conditioned
    factors) or returns non-finite values, retry in float64, then in float64 with a tiny
    diagonal shift; the result is cast back to A's dtype. Non-finite input raises.
    ``symmetrize=False`` skips (A + Aᵀ)/2 (one copy of A less: eigh reads A's lower triangle
    only), for an A symmetric by construction (a Gram matrix).
    """
    check_square(A)
    if not bool(torch.isfinite(A).all()):
        raise FloatingPointError("eigh_with_fallback: the matrix holds NaN or inf")
    S = (A + A.T) / 2 if symmetrize else A
    failure = ""
    for attempt in range(3):
        M = S if attempt == 0 else S.double() if attempt == 1 else _shifted(S.double())
        try:
            evals, evecs = torch.linalg.eigh(M)
        except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
            failure = str(exc)  # not exc: its traceback would hold this frame (S, M) in a cycle
            continue
        finally:
            del M
        if bool(torch.isfinite(evals).all()) and bool(torch.isfinite(evecs).all()):
            if attempt == 2:
                evals = evals - _shift_size(S.double())
            evecs = evecs.to(A.dtype)  # cast, then flip: one float64 (n, n) copy fewer
            return evals.flip(0).to(A.dtype), evecs.flip(1)
    raise RuntimeError(f"eigh failed in {A.dtype} and in float64: {failure}")


def _shift_size(A: torch.Tensor) -> float:
    scale = float(A.abs().max()) or 1.0
    return scale * A.shape[0] * torch.finfo(torch.float64).eps


def _shifted(A: torch.Tensor) -> torch.Tensor:
    return A + _shift_size(A) * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)


def as_matmul(A: torch.Tensor | Matmul) -> Matmul:
    """Q -> A Q for a dense tensor A (checked square) or a function itself."""
    if not isinstance(A, torch.Tensor):
        return A
    check_square(A)
    return lambda Q: A @ Q.to(dtype=A.dtype)


def orthogonal_iteration(A: torch.Tensor | Matmul, Q: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Warm-started subspace (QR) iteration: ``steps`` times Q <- qr(A Q).Q, signs fixed.

    Q: (n, m) with orthonormal columns (m <= n). Converges to the top-m eigenvectors by
    |λ| (for a PSD A: by λ); each step costs m products with A and one thin QR.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if Q.ndim != 2:
        raise ValueError(f"Q must be a matrix (n, m), got shape {tuple(Q.shape)}")
    matmul = as_matmul(A)
    for _ in range(steps):
        Qn, R = torch.linalg.qr(matmul(Q).to(device=Q.device, dtype=Q.dtype))
        signs = torch.sign(torch.diagonal(R))
        signs[signs == 0] = 1
        Q = Qn * signs  # keep each column's orientation stable across steps
    return Q


def _index_state(state, order: torch.Tensor):
    if isinstance(state, tuple):
        tensor, dim = state
        return tensor.index_select(dim, order.to(tensor.device))
    return state.index_select(0, order.to(state.device))


def sort_by_approx_eigenvalues(A: torch.Tensor | Matmul, Q: torch.Tensor, *state):
    """Sort the columns of Q by the diagonal of QᵀAQ, descending, and permute the state alike.

    Each ``state`` item is a tensor (permuted along axis 0) or a pair ``(tensor, dim)``
    (permuted along ``dim``), e.g. ``(E, 1)`` for EKFAC eigenvalues stored per column of
    the basis. Returns ``(values, Q_sorted, *state_sorted)`` with ``values`` = diag(QᵀAQ)
    sorted, so every per-direction quantity stays attached to its direction.
    """
    AQ = as_matmul(A)(Q).to(device=Q.device, dtype=Q.dtype)
    values = (Q * AQ).sum(dim=0)
    order = torch.argsort(values, descending=True)
    sorted_state = [_index_state(s, order) for s in state]
    return (values[order], Q[:, order], *sorted_state)


def refresh_eigenbasis(
    As: Sequence,
    Qs: Sequence[torch.Tensor | None] | None = None,
    method: str = "eigh",
    steps: int = 1,
    to_dense: Callable[[Any], torch.Tensor] = lambda A: A,
    to_matmul: Callable[[Any], torch.Tensor | Matmul] = lambda A: A,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(values, Q) for each symmetric A in ``As``, values descending.

    method "eigh": a full eigendecomposition (``eigh_with_fallback``; ``Qs`` ignored).
    method "qr": ``steps`` of ``orthogonal_iteration`` warm-started from the matching Q,
    then ``sort_by_approx_eigenvalues`` (values are the Rayleigh quotients diag(QᵀAQ));
    a missing Q (None) falls back to eigh. ``to_dense`` / ``to_matmul`` turn another kind
    of A (an operator) into a tensor for eigh / a product for QR (default: A as it is).
    """
    if method not in ("eigh", "qr"):
        raise ValueError(f"method must be one of 'eigh', 'qr'; got {method!r}")
    Qs = list(Qs) if Qs is not None else [None] * len(As)
    if len(Qs) != len(As):
        raise ValueError(f"got {len(As)} matrices but {len(Qs)} bases")
    out = []
    for A, Q in zip(As, Qs):
        if method == "eigh" or Q is None:
            out.append(eigh_with_fallback(to_dense(A)))
        else:
            Q = orthogonal_iteration(to_matmul(A), Q, steps)
            values, Q = sort_by_approx_eigenvalues(to_matmul(A), Q)
            out.append((values, Q))
    return out
