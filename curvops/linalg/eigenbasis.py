"""Eigenbases of symmetric matrices on any operator: robust eigh, warm-started QR refresh, sorting.

Every routine takes a dense symmetric torch tensor (n, n) or any operator (a curvops
operator, a scipy LinearOperator, an array); the dense math lives in ``curvops.core.eigh``.
Eigenvalues are returned in DESCENDING order, eigenvectors as the columns of Q (n, n).
A must be real, finite and symmetric: a dense one is compared with its transpose, an
operator's dense matrix likewise, an operator used by products is probed once
(``curvops.interface.torch_matmat``); a NaN or inf product raises FloatingPointError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from curvops.core import eigh as _eigh
from curvops.core.checks import check_count
from curvops.core.errors import NotSymmetricError
from curvops.core.options import EigenbasisMethod, check_choice
from curvops.interface import SYMMETRY_EPS, torch_matmat

EIGENBASIS_METHODS = ("eigh", "qr")


def _dense(A: Any, algorithm: str = "eigh_with_fallback") -> torch.Tensor:
    """A as a dense (n, n) tensor, checked real, finite and symmetric (an operator is
    multiplied with the identity: one matmat of n columns, no symmetry probe)."""
    if isinstance(A, torch.Tensor):
        return _checked_tensor(A)
    mm = torch_matmat(A, check_symmetric=False, algorithm=algorithm)
    D = mm(torch.eye(mm.size, device=mm.device, dtype=mm.dtype))
    return D if mm.symmetric else _checked_tensor(D)


def _matmul(A: Any, algorithm: str, Q: torch.Tensor) -> torch.Tensor | _eigh.Matmul:
    """A dense tensor (checked) as it is; an operator as Q -> A Q on its own device and
    dtype (probed for symmetry once, by ``torch_matmat``); then Q (n, m) checked."""
    if isinstance(A, torch.Tensor):
        out: torch.Tensor | _eigh.Matmul = _checked_tensor(A)
        n = A.shape[0]
    else:
        mm = torch_matmat(A, algorithm=algorithm)
        out, n = (lambda M: mm(M.to(device=mm.device, dtype=mm.dtype))), mm.size
    _check_basis(Q, n)
    return out


def _checked_tensor(A: torch.Tensor) -> torch.Tensor:
    """A real, finite, square (n, n) tensor, symmetric to round-off (``SYMMETRY_EPS``)."""
    _eigh.check_square(A)
    if A.is_complex() or not A.is_floating_point():
        raise TypeError(
            f"expected a real floating-point matrix, got {A.dtype} (complex matrices are "
            "not supported)"
        )
    if not bool(torch.isfinite(A).all()):
        raise FloatingPointError("the matrix holds NaN or inf: its eigenbasis is undefined")
    if A.numel() == 0:
        return A
    gap, scale = float((A - A.T).abs().max()), float(A.abs().max())
    if gap > SYMMETRY_EPS * torch.finfo(A.dtype).eps * scale:
        raise NotSymmetricError(
            f"the matrix is not symmetric: max |A − Aᵀ| = {gap:.3g} for max |A| = "
            f"{scale:.3g}; eigenbases need a symmetric matrix: pass its symmetric part (A + Aᵀ)/2"
        )
    return A


def _check_basis(Q: torch.Tensor, n: int) -> None:
    """Q a real, finite (n, m) tensor with m <= n."""
    if not isinstance(Q, torch.Tensor) or Q.ndim != 2 or Q.shape[0] != n or Q.shape[1] > n:
        shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
        raise ValueError(f"Q must be a tensor (n, m) with n = {n} and m <= n; got {shape}")
    if Q.is_complex() or not bool(torch.isfinite(Q).all()):
        raise ValueError("Q must hold real, finite values")


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
    check_count("steps", steps, 0)
    return _eigh.orthogonal_iteration(_matmul(A, "orthogonal_iteration", Q), Q, int(steps))


def sort_by_approx_eigenvalues(A: Any, Q: torch.Tensor, *state: Any) -> tuple:
    """Sort the columns of Q by the diagonal of QᵀAQ, descending, and permute the state alike.

    Each ``state`` item is a tensor (permuted along axis 0) or a pair ``(tensor, dim)``
    (permuted along ``dim``), e.g. ``(E, 1)`` for EKFAC eigenvalues stored per column of
    the basis. Returns ``(values, Q_sorted, *state_sorted)`` with ``values`` = diag(QᵀAQ)
    sorted, so every per-direction quantity stays attached to its direction.
    """
    matmul = _matmul(A, "sort_by_approx_eigenvalues", Q)
    return _eigh.sort_by_approx_eigenvalues(matmul, Q, *state)


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
    check_count("steps", steps, 0)
    Qs = list(Qs) if Qs is not None else [None] * len(As)
    if len(Qs) != len(As):
        raise ValueError(f"got {len(As)} matrices but {len(Qs)} bases")
    prepared = [_prepared(A, Q, method) for A, Q in zip(As, Qs)]
    return _eigh.refresh_eigenbasis(
        prepared, Qs, method, int(steps), to_dense=_dense, to_matmul=_reuse
    )


def _prepared(A: Any, Q: torch.Tensor | None, method: str):
    """A checked once: a dense tensor for eigh, a probed product for the QR refresh."""
    if method == "eigh" or Q is None:
        return _dense(A, "refresh_eigenbasis")
    return _matmul(A, "refresh_eigenbasis", Q)


def _reuse(A: Any) -> torch.Tensor | _eigh.Matmul:
    """A prepared A (tensor or product) as it is."""
    return A
