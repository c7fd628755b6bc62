"""Eigenbases of symmetric matrices on any operator: robust eigh, warm-started QR refresh, sorting.

Every routine takes a dense symmetric torch tensor (n, n) or any operator (a curvops
operator, a scipy LinearOperator, an array); the dense math lives in ``curvops.core.eigh``.
Eigenvalues are returned in DESCENDING order, eigenvectors as the columns of Q (n, n).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from curvops.core import eigh as _eigh
from curvops.core.options import EigenbasisMethod, check_choice
from curvops.interface import torch_matmat

EIGENBASIS_METHODS = ("eigh", "qr")


def _dense(A: Any) -> torch.Tensor:
    """A as a dense (n, n) tensor (an operator is multiplied with the identity)."""
    if isinstance(A, torch.Tensor):
        return A
    mm = torch_matmat(A)
    return mm(torch.eye(mm.size, device=mm.device, dtype=mm.dtype))


def _matmul(A: Any) -> torch.Tensor | _eigh.Matmul:
    """A dense tensor as it is; an operator as Q -> A Q on its own device and dtype."""
    if isinstance(A, torch.Tensor):
        return A
    mm = torch_matmat(A)
    return lambda Q: mm(Q.to(device=mm.device, dtype=mm.dtype))


def eigh_with_fallback(A: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (n,) descending and eigenvectors Q (n, n) of a symmetric A = Q diag(λ) Qᵀ.

    ``torch.linalg.eigh`` in A's dtype first; if it fails (float32 on ill-conditioned
    factors) or returns non-finite values, retry in float64, then in float64 with a tiny
    diagonal shift; the result is cast back to A's dtype. Non-finite input raises.
    """
    return _eigh.eigh_with_fallback(_dense(A))


def orthogonal_iteration(A: Any, Q: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Warm-started subspace (QR) iteration: ``steps`` times Q <- qr(A Q).Q, signs fixed.

    Q: (n, m) with orthonormal columns (m <= n). Converges to the top-m eigenvectors by
    |λ| (for a PSD A: by λ); each step costs m products with A and one thin QR.
    """
    return _eigh.orthogonal_iteration(_matmul(A), Q, steps)


def sort_by_approx_eigenvalues(A: Any, Q: torch.Tensor, *state: Any) -> tuple:
    """Sort the columns of Q by the diagonal of QᵀAQ, descending, and permute the state alike.

    Each ``state`` item is a tensor (permuted along axis 0) or a pair ``(tensor, dim)``
    (permuted along ``dim``), e.g. ``(E, 1)`` for EKFAC eigenvalues stored per column of
    the basis. Returns ``(values, Q_sorted, *state_sorted)`` with ``values`` = diag(QᵀAQ)
    sorted, so every per-direction quantity stays attached to its direction.
    """
    return _eigh.sort_by_approx_eigenvalues(_matmul(A), Q, *state)


def refresh_eigenbasis(
    As: Sequence[Any],
    Qs: Sequence[torch.Tensor | None] | None = None,
    method: EigenbasisMethod = "eigh",
    steps: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(values, Q) for each symmetric A in ``As``, values descending.

    method "eigh": a full eigendecomposition (``eigh_with_fallback``; ``Qs`` ignored).
    method "qr": ``steps`` of ``orthogonal_iteration`` warm-started from the matching Q,
    then ``sort_by_approx_eigenvalues`` (values are the Rayleigh quotients diag(QᵀAQ));
    a missing Q (None) falls back to eigh.
    """
    check_choice("method", method, EigenbasisMethod)
    return _eigh.refresh_eigenbasis(As, Qs, method, steps, to_dense=_dense, to_matmul=_matmul)
