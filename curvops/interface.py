"""The numpy <-> torch boundary, both ways.

``SymmetricTorchOperator``: the base of every curvops operator, a symmetric scipy
LinearOperator whose numpy products go through ``torch_matmat`` on ``self.device``.
``torch_matmat(op)``: the algorithms' single entry point, any LinearOperator (or array) as a
counting torch function ``M (P, k) -> A @ M``; curvops operators need no host copy, any other
``scipy.sparse.linalg.LinearOperator`` is wrapped through its numpy ``matmat``. It refuses
what the algorithms would turn into a silent wrong number: a non-symmetric operator
(``NotSymmetricError``), a complex one (TypeError), and a product holding NaN or inf
(FloatingPointError, naming the product).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from curvops.core import checks
from curvops.core.errors import NotSymmetricError

__all__ = [
    "OperatorLike",
    "SupportsTorchMatmat",
    "SymmetricTorchOperator",
    "TorchMatmat",
    "as_linear_operator",
    "probe_symmetry",
    "torch_matmat",
]


class SymmetricTorchOperator(LinearOperator):
    """A symmetric scipy LinearOperator whose numpy products go through ``torch_matmat``
    on ``self.device`` (one host copy each way), with the inputs validated.

    Subclasses set ``device`` and ``torch_dtype`` and implement ``torch_matmat``.
    """

    device: torch.device
    torch_dtype: torch.dtype

    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """A @ M for M (P,) or (P, k) on ``self.device``."""
        raise NotImplementedError(f"{type(self).__name__} must implement torch_matmat")

    def matvec(self, x: np.ndarray) -> np.ndarray:
        checks.check_numpy_input(x, self.shape[0])
        return super().matvec(x)

    def matmat(self, X: np.ndarray) -> np.ndarray:
        checks.check_numpy_input(X, self.shape[0])
        return super().matmat(X)

    def rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self.matvec(x)  # symmetric

    def rmatmat(self, X: np.ndarray) -> np.ndarray:
        return self.matmat(X)

    def _matvec(self, x):
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _matmat(self, X):
        M = torch.as_tensor(np.ascontiguousarray(X, dtype=self.dtype), device=self.device)
        return self.torch_matmat(M).cpu().numpy()

    def _rmatvec(self, x):
        return self._matvec(x)

    def _adjoint(self):
        return self

    def _transpose(self):
        return self


PROBE_SEED = 1_234_567  # the symmetry probe's two vectors: fixed, independent of any algorithm
SYMMETRY_EPS = 256  # asymmetry allowed, in machine epsilons of the operator's dtype


@dataclass
class TorchMatmat:
    """An operator as a checked torch function ``M (P, k) -> A @ M (P, k)``.

    Attributes: ``fn`` the product, ``size`` P, ``device``, ``dtype`` (torch),
    ``n_matvecs`` the number of columns multiplied so far (the symmetry probe not
    included), ``symmetric`` True once symmetry is established (by construction, a
    direct check of a dense matrix, or ``probe_symmetry``), ``label`` the algorithm named
    in error messages, ``n_calls`` the products made so far (the probe included).
    Every product is checked: a real tensor of shape (P, k), finite.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    size: int
    device: torch.device
    dtype: torch.dtype
    n_matvecs: int = 0
    symmetric: bool = False
    label: str = ""
    n_calls: int = 0

    def __call__(self, M: torch.Tensor, count: bool = True) -> torch.Tensor:
        """A @ M for M (P,) or (P, k); ``count=False`` leaves ``n_matvecs`` (the probe)."""
        squeeze = M.ndim == 1
        if squeeze:
            M = M.unsqueeze(1)
        if count:
            self.n_matvecs += M.shape[1]
        self.n_calls += 1
        out = self.fn(M)
        self._check_product(out, tuple(M.shape), count)
        return out.squeeze(1) if squeeze else out

    def _check_product(self, out, shape: tuple[int, ...], count: bool) -> None:
        notes = ", ".join(x for x in ("" if count else "the symmetry probe", self.label) if x)
        what = f"product {self.n_calls} of the operator" + (f" ({notes})" if notes else "")
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{what} returned a {type(out).__name__}, not a torch.Tensor")
        if out.is_complex():
            raise TypeError(f"{what} is complex ({out.dtype}): {_REAL_ONLY}")
        if tuple(out.shape) != shape:
            raise ValueError(
                f"{what} has shape {tuple(out.shape)}, expected {shape}: A @ M must have the "
                "shape of M (P, k)"
            )
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                f"NaN or inf in {what}: every result computed from it would be meaningless. "
                "Check the operator (for a model: NaN/inf in its parameters or data, overflow "
                "in the loss); use float64 if it is ill-scaled"
            )


_REAL_ONLY = (
    "curvops' algorithms need a real symmetric operator and would drop the imaginary part; "
    "pass a real one (for a Hermitian H, the real symmetric [[Re H, -Im H], [Im H, Re H]])"
)


@runtime_checkable
class SupportsTorchMatmat(Protocol):
    """Anything with a torch product, a device and a square shape (duck-typed operators)."""

    shape: tuple[int, int]
    device: Any

    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor: ...


OperatorLike: TypeAlias = (
    LinearOperator | np.ndarray | torch.Tensor | sp.spmatrix | SupportsTorchMatmat
)
"""What every algorithm accepts: a LinearOperator, a dense or sparse matrix, or a duck type."""


def as_linear_operator(op: OperatorLike) -> LinearOperator:
    """Accept a LinearOperator, a numpy array or a torch tensor; return a real, square
    LinearOperator (complex dtypes are refused with a TypeError)."""
    if isinstance(op, torch.Tensor):
        op = op.detach().cpu().numpy()
    if not isinstance(op, LinearOperator):
        op = aslinearoperator(op)
    if len(op.shape) != 2 or op.shape[0] != op.shape[1]:
        raise ValueError(f"expected a square operator, got shape {op.shape}")
    _check_real(op.dtype)
    return op


def torch_matmat(
    op: OperatorLike | TorchMatmat, check_symmetric: bool = True, algorithm: str = ""
) -> TorchMatmat:
    """Wrap ``op`` as a counting, checked torch matmat on its own device.

    A ``TorchMatmat`` is returned as it is (its count keeps running). Uses
    ``op.torch_matmat`` when present (curvops operators, or any object with that
    method and ``device`` / ``dtype`` / ``shape`` attributes); otherwise multiplies on the
    host through ``op.matmat`` in float64 (float32 if ``op.dtype`` is float32).
    ``check_symmetric``: refuse a non-symmetric operator (``NotSymmetricError``): a dense
    array is compared with its transpose, curvops operators (``SymmetricTorchOperator``)
    are symmetric by construction, any other operator is probed once by
    ``probe_symmetry`` (one product of 2 columns, not counted in ``n_matvecs``).
    ``algorithm``: the name given in error messages.
    """
    A = _adapt(op, check_symmetric, algorithm)
    if A.size < 1:
        raise ValueError(f"the operator is empty (shape {(A.size, A.size)}): nothing to compute")
    if algorithm:
        A.label = algorithm
    if check_symmetric:
        probe_symmetry(A)
    return A


def probe_symmetry(A: TorchMatmat) -> None:
    """Refuse a non-symmetric A by one product with two seeded vectors u, v (P,).

    |uᵀ(A v) − vᵀ(A u)| must stay within ``SYMMETRY_EPS`` machine epsilons of
    ‖A u‖‖v‖ + ‖A v‖‖u‖. The product is not counted in ``n_matvecs``. Sets
    ``A.symmetric``; does nothing when it is already set, or for P = 1.
    """
    if A.symmetric or A.size == 1:
        A.symmetric = True
        return
    gen = torch.Generator(device="cpu").manual_seed(PROBE_SEED)
    UV = torch.randn(A.size, 2, generator=gen, dtype=torch.float64).to(A.device, A.dtype)
    AUV = A(UV, count=False).to(torch.float64)
    U, V = UV.to(torch.float64).T
    AU, AV = AUV.T
    gap, scale = float(U @ AV - V @ AU), float(AU.norm() * V.norm() + AV.norm() * U.norm())
    tol = SYMMETRY_EPS * torch.finfo(A.dtype).eps
    if abs(gap) > tol * scale:
        raise NotSymmetricError(
            f"the operator is not symmetric: for two random vectors u, v, uᵀ(A v) − vᵀ(A u) "
            f"= {gap:.3g}, {abs(gap) / scale:.2g} of ‖A u‖‖v‖ + ‖A v‖‖u‖ (round-off allows "
            f"{tol:.1g}). {_SYMMETRIC_ONLY.format(A.label or 'this algorithm')}"
        )
    A.symmetric = True


_SYMMETRIC_ONLY = (
    "{} assumes a real symmetric operator and would return wrong numbers for another one "
    "(e.g. Lanczos' eigenvalues, residuals and convergence flags rely on Aᵀ = A). Pass a symmetric "
    "operator, e.g. its symmetric part (A + Aᵀ)/2 as LinearOperator(A.shape, "
    "matvec=lambda x: (A @ x + A.T @ x) / 2); for the eigenvalues of a non-symmetric A use "
    "scipy.sparse.linalg.eigs, for its singular values svds"
)


def _adapt(op, check_symmetric: bool, algorithm: str) -> TorchMatmat:
    """``op`` as a TorchMatmat; ``symmetric`` set for curvops operators and (checked, if
    ``check_symmetric``) dense matrices."""
    if isinstance(op, TorchMatmat):
        return op
    if hasattr(op, "torch_matmat") and hasattr(op, "device"):
        P = _square_size(op.shape)
        dtype = op.torch_dtype if hasattr(op, "torch_dtype") else _torch_dtype(op.dtype)
        if dtype.is_complex:
            raise TypeError(f"the operator's dtype is {dtype}: {_REAL_ONLY}")
        symmetric = isinstance(op, SymmetricTorchOperator)
        return TorchMatmat(op.torch_matmat, P, torch.device(op.device), dtype, symmetric=symmetric)
    dense = _checked_dense(op, check_symmetric, algorithm)
    lin = as_linear_operator(op if dense is None else dense)
    dtype = _torch_dtype(lin.dtype)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64

    def host_matmat(M: torch.Tensor) -> torch.Tensor:
        out = np.asarray(lin.matmat(M.detach().cpu().numpy().astype(np_dtype, copy=False)))
        if np.iscomplexobj(out):
            raise TypeError(f"a product of the operator is complex ({out.dtype}): {_REAL_ONLY}")
        return torch.as_tensor(out, dtype=dtype, device=M.device)

    mm = TorchMatmat(host_matmat, lin.shape[0], torch.device("cpu"), dtype)
    mm.symmetric = dense is not None and check_symmetric
    return mm


def _checked_dense(op, check_symmetric: bool, algorithm: str):
    """A numpy array / torch tensor / scipy sparse matrix ``op`` as numpy (or sparse),
    checked real, square, finite and (if asked) symmetric to round-off; None for anything
    else."""
    if isinstance(op, torch.Tensor):
        op = op.detach().cpu().numpy()
    if not (isinstance(op, np.ndarray) or sp.issparse(op)):
        return None
    _square_size(op.shape)
    _check_real(op.dtype)
    if not np.issubdtype(op.dtype, np.floating):
        op = op.astype(np.float64)
    values = op.data if sp.issparse(op) else op
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        where = f" at entry {tuple(int(i) for i in bad)}" if isinstance(op, np.ndarray) else ""
        raise FloatingPointError(
            f"the matrix holds NaN or inf values{where}: every result computed from it "
            "would be meaningless; replace them first"
        )
    if not check_symmetric:
        return op
    gap = float(abs(op - op.T).max()) if sp.issparse(op) else _max_asymmetry(op)
    scale = max(float(values.max(initial=0.0)), -float(values.min(initial=0.0)))
    if gap > SYMMETRY_EPS * np.finfo(op.dtype).eps * scale:
        raise NotSymmetricError(
            f"the matrix is not symmetric: max |A − Aᵀ| = {float(gap):.3g} for max |A| = "
            f"{float(scale):.3g}. {_SYMMETRIC_ONLY.format(algorithm or 'This algorithm')}"
        )
    return op


def _max_asymmetry(D: np.ndarray, tile: int = 256) -> float:
    """max |D − Dᵀ| over tiles of the upper triangle (no (P, P) temporary, cache-friendly)."""
    gap = 0.0
    for i in range(0, D.shape[0], tile):
        for j in range(i, D.shape[0], tile):
            block = D[i : i + tile, j : j + tile] - D[j : j + tile, i : i + tile].T
            gap = max(gap, float(np.abs(block).max()))
    return gap


def _square_size(shape) -> int:
    shape = tuple(shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square operator (P, P), got shape {shape}")
    return int(shape[0])


def _check_real(dtype) -> None:
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        raise TypeError(f"the operator's dtype is {np.dtype(dtype)}: {_REAL_ONLY}")


def _torch_dtype(np_dtype) -> torch.dtype:
    if isinstance(np_dtype, torch.dtype):
        return np_dtype
    _check_real(np_dtype)
    return torch.float32 if np.dtype(np_dtype) == np.float32 else torch.float64
