"""(A + λI)⁻¹ g for the natural-gradient cosine of the probe route, with a stated residual.

A positive semi-definite exact operator is solved by conjugate gradients, at most
``maxiter`` products, optionally (``precondition``) preconditioned with an approximation's
closed-form inverse (KFAC / EKFAC: (B + λI)⁻¹; off by default: on the ResNet-18 of
``benchmarks/compare_scale.py`` one such application costs several exact products); any
other exact operator by ``damped_inverse`` (MINRES) with the same caps.
The relative residual ‖g − (A + λI) x‖ / ‖g‖ reached is returned, so the cosine's accuracy
is stated, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from curvops.interface import TorchMatmat
from curvops.operators.inverse import damped_inverse

Apply = Callable[[torch.Tensor], torch.Tensor]


def pcg(
    A: TorchMatmat, g: torch.Tensor, lam: float, precond: Apply | None, tol: float, maxiter: int
) -> tuple[torch.Tensor, float, int]:
    """x ≈ (A + λI)⁻¹ g (P,) by preconditioned CG; (x, relative residual, iterations)."""
    x, r = torch.zeros_like(g), g.clone()
    z = precond(r) if precond is not None else r.clone()
    p, rz, norm_g = z.clone(), float(r @ z), float(g.norm())
    for it in range(1, maxiter + 1):
        Ap = A(p) + lam * p
        alpha = rz / max(float(p @ Ap), torch.finfo(g.dtype).tiny)
        x += alpha * p
        r -= alpha * Ap
        residual = float(r.norm()) / max(norm_g, torch.finfo(g.dtype).tiny)
        if residual <= tol:
            return x, residual, it
        z = precond(r) if precond is not None else r
        rz_new = float(r @ z)
        p = z + (rz_new / max(rz, torch.finfo(g.dtype).tiny)) * p
        rz = rz_new
    return x, residual, maxiter


def preconditioner(approx: dict, lam: float) -> tuple[str, Apply] | None:
    """(name, r -> (B + λI)⁻¹ r) of the first PSD approximation with a closed-form inverse."""
    for name, op in approx.items():
        if getattr(op, "is_psd", False) and callable(getattr(op, "inverse", None)):
            inverse = op.inverse(lam)
            return name, lambda r, inv=inverse: inv.torch_matmat(r.to(inv.device)).to(r)
    return None


def exact_solve(
    exact: Any,
    A: TorchMatmat,
    g: torch.Tensor,
    lam: float,
    approx: dict,
    tol: float,
    maxiter: int,
    precondition: bool = False,
) -> tuple[torch.Tensor, dict]:
    """(A + λI)⁻¹ g in float64 on the host, and how it was solved (method, residual, ...)."""
    rhs = g.to(A.device, A.dtype)
    psd = getattr(exact, "is_psd", False)
    pre = preconditioner(approx, lam) if psd and precondition else None
    if getattr(exact, "is_psd", False):
        x, residual, iterations = pcg(A, rhs, lam, pre[1] if pre else None, tol, maxiter)
        method = f"CG preconditioned by {pre[0]}" if pre else "CG"
    else:
        inverse = damped_inverse(exact, lam, method="minres", tol=tol, maxiter=maxiter)
        x = inverse.torch_matmat(rhs)
        residual = float((rhs - A(x) - lam * x).norm() / rhs.norm())
        method, iterations = "MINRES", -1
    info = {"method": method, "residual": residual, "iterations": iterations, "tol": tol}
    return x.double().cpu(), info


def approx_solve(op: Any, lam: float, g: torch.Tensor, tol: float, maxiter: int) -> torch.Tensor:
    """(B + λI)⁻¹ g (P,) in float64 on the host: closed form when B has one."""
    inverse_op = damped_inverse(op, lam, tol=tol, maxiter=maxiter)
    if hasattr(inverse_op, "torch_matmat"):
        dtype = torch.float32 if np.dtype(inverse_op.dtype) == np.float32 else torch.float64
        return inverse_op.torch_matmat(g.to(inverse_op.device, dtype)).double().cpu()
    return torch.as_tensor(inverse_op @ g.cpu().numpy(), dtype=torch.float64)
