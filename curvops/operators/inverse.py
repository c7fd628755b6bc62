"""Damped inverses (A + λI)⁻¹ for operators without a closed form, by Krylov solves.

KFAC / EKFAC have exact closed forms (``op.inverse(damping)``); every other operator
is inverted iteratively here: conjugate gradients on the operator's device for positive
semi-definite A (GGN, Fisher), MINRES (scipy) for indefinite A (the Hessian).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
import torch

from curvops.core.options import InverseMethod
from curvops.interface import SymmetricTorchOperator, torch_matmat


class InverseNotConvergedWarning(UserWarning):
    """A Krylov solve stopped before reaching its tolerance."""


class DampedInverse(SymmetricTorchOperator):
    """(A + λI)⁻¹ as a LinearOperator; each product is one Krylov solve per column.

    ``method``: "cg" (A must be PSD: GGN, Fisher, KFAC), "minres" (any symmetric A), or
    "auto" (CG if ``A.is_psd`` is true, as for GGN / Fisher / KFAC, else MINRES).
    """

    def __init__(
        self,
        A: Any,
        damping: float,
        method: str = "auto",
        tol: float = 1e-8,
        maxiter: int | None = None,
    ) -> None:
        if not 0 <= damping < float("inf"):
            raise ValueError(
                f"damping must be >= 0 and finite (the λ of (A + λI)⁻¹), got {damping}; a "
                "negative λ can make A + λI singular or indefinite"
            )
        if method not in ("auto", "cg", "minres"):
            raise ValueError(f"method must be 'auto', 'cg' or 'minres', got {method!r}")
        if method == "auto":
            method = "minres" if _maybe_indefinite(A) else "cg"
        self.A, self.damping, self.method, self.tol = A, float(damping), method, tol
        self.maxiter = maxiter or 10 * A.shape[0]
        self._mm = torch_matmat(A)
        self.device, self.torch_dtype = self._mm.device, self._mm.dtype
        super().__init__(
            dtype=np.dtype(str(self.torch_dtype).removeprefix("torch.")), shape=A.shape
        )

    def torch_matmat(self, B: torch.Tensor) -> torch.Tensor:
        """(A + λI)⁻¹ B for B (P,) or (P, k) on the operator's device."""
        squeeze = B.ndim == 1
        B = (B.unsqueeze(1) if squeeze else B).to(self.device, self.torch_dtype)
        X = self._cg(B) if self.method == "cg" else self._minres(B)
        return X.squeeze(1) if squeeze else X

    def _apply(self, X: torch.Tensor) -> torch.Tensor:
        return self._mm(X) + self.damping * X

    def _cg(self, B: torch.Tensor) -> torch.Tensor:
        """Block-diagonal CG: k independent solves sharing each matmat."""
        X = torch.zeros_like(B)
        R = B.clone()
        Pd = R.clone()
        rs = (R * R).sum(0)
        target = (self.tol * B.norm(dim=0)) ** 2
        for _ in range(self.maxiter):
            if bool((rs <= target).all()):
                return X
            AP = self._apply(Pd)
            alpha = rs / (Pd * AP).sum(0).clamp(min=torch.finfo(B.dtype).tiny)
            X += alpha * Pd
            R -= alpha * AP
            rs_new = (R * R).sum(0)
            Pd = R + (rs_new / rs.clamp(min=torch.finfo(B.dtype).tiny)) * Pd
            rs = rs_new
        warnings.warn(
            f"CG did not reach tol={self.tol} in {self.maxiter} iterations; increase the "
            "damping or maxiter (is the operator PSD? use method='minres' if not)",
            InverseNotConvergedWarning,
            stacklevel=3,
        )
        return X

    def _minres(self, B: torch.Tensor) -> torch.Tensor:
        n = self.shape[0]
        op = sla.LinearOperator(
            (n, n),
            matvec=lambda v: (
                self._apply(torch.as_tensor(np.asarray(v, dtype=self.dtype), device=self.device))
                .cpu()
                .numpy()
            ),
            dtype=self.dtype,
        )
        cols = []
        for b in B.T.cpu().numpy():
            x, info = sla.minres(op, b, rtol=self.tol, maxiter=self.maxiter)
            if info != 0:
                warnings.warn(
                    f"MINRES stopped with info={info} before tol={self.tol}; increase the "
                    "damping or maxiter",
                    InverseNotConvergedWarning,
                    stacklevel=3,
                )
            cols.append(x)
        return torch.as_tensor(np.stack(cols, axis=1), device=self.device, dtype=self.torch_dtype)


def damped_inverse(
    A: Any, damping: float, method: InverseMethod = "auto", **kwargs: Any
) -> SymmetricTorchOperator:
    """(A + λI)⁻¹: the operator's exact ``inverse`` when it has one, else a Krylov solve."""
    if hasattr(A, "inverse") and callable(A.inverse):
        return A.inverse(damping)
    return DampedInverse(A, damping, method=method, **kwargs)


def _maybe_indefinite(A) -> bool:
    return not getattr(A, "is_psd", False)
