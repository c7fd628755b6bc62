"""The numpy <-> torch boundary, both ways.

``SymmetricTorchOperator``: the base of every curvops operator, a symmetric scipy
LinearOperator whose numpy products go through ``torch_matmat`` on ``self.device``.
``torch_matmat(op)``: the algorithms' single entry point, any LinearOperator (or array) as a
counting torch function ``M (P, k) -> A @ M``; curvops operators need no host copy, any other
``scipy.sparse.linalg.LinearOperator`` is wrapped through its numpy ``matmat``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from curvops.core import checks

__all__ = ["SymmetricTorchOperator", "TorchMatmat", "as_linear_operator", "torch_matmat"]


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


@dataclass
class TorchMatmat:
    """A symmetric operator as a torch function ``M (P, k) -> A @ M (P, k)``.

    Attributes: ``fn`` the product, ``size`` P, ``device``, ``dtype`` (torch),
    ``n_matvecs`` the number of columns multiplied so far.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    size: int
    device: torch.device
    dtype: torch.dtype
    n_matvecs: int = 0

    def __call__(self, M: torch.Tensor) -> torch.Tensor:
        squeeze = M.ndim == 1
        if squeeze:
            M = M.unsqueeze(1)
        self.n_matvecs += M.shape[1]
        out = self.fn(M)
        return out.squeeze(1) if squeeze else out


def as_linear_operator(op) -> LinearOperator:
    """Accept a LinearOperator, a numpy array or a torch tensor; return a LinearOperator."""
    if isinstance(op, torch.Tensor):
        op = op.detach().cpu().numpy()
    if not isinstance(op, LinearOperator):
        op = aslinearoperator(op)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"expected a square operator, got shape {op.shape}")
    return op


def torch_matmat(op) -> TorchMatmat:
    """Wrap ``op`` as a counting torch matmat on its own device.

    A ``TorchMatmat`` is returned as it is (its count keeps running). Uses
    ``op.torch_matmat`` when present (curvops operators, or any object with that
    method and ``device`` / ``dtype`` attributes); otherwise multiplies on the host
    through ``op.matmat`` in float64 (float32 if ``op.dtype`` is float32).
    """
    if isinstance(op, TorchMatmat):
        return op
    if hasattr(op, "torch_matmat") and hasattr(op, "device"):
        dtype = op.torch_dtype if hasattr(op, "torch_dtype") else _torch_dtype(op.dtype)
        return TorchMatmat(op.torch_matmat, op.shape[0], torch.device(op.device), dtype)
    lin = as_linear_operator(op)
    dtype = torch.float32 if np.dtype(lin.dtype) == np.float32 else torch.float64
    np_dtype = np.float32 if dtype == torch.float32 else np.float64

    def host_matmat(M: torch.Tensor) -> torch.Tensor:
        out = lin.matmat(M.detach().cpu().numpy().astype(np_dtype, copy=False))
        return torch.as_tensor(np.asarray(out), dtype=dtype, device=M.device)

    return TorchMatmat(host_matmat, lin.shape[0], torch.device("cpu"), dtype)


def _torch_dtype(np_dtype) -> torch.dtype:
    return torch.float32 if np.dtype(np_dtype) == np.float32 else torch.float64
