"""``landscape``: 1-D and 2-D slices of the whole-data loss, with the quadratic model."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from curvops.landscapes.directions import eigen_directions, resolve
from curvops.landscapes.loss import WholeDataLoss
from curvops.landscapes.result import Landscape
from curvops.operators import HessianOperator

REACH = 4.0  # default span: where the quadratic model has risen by REACH · L(θ₀)


def landscape(
    model: nn.Module,
    loss_fn: Callable,
    data: Iterable,
    directions: Any = "random",
    *,
    dims: int | None = None,
    span: float | Sequence[float] | None = None,
    points: int | None = None,
    seed: int = 0,
    biases: str = "zero",
    params: Iterable[torch.Tensor] | None = None,
    batch_size_fn: Callable[[Any], int] | None = None,
    reduction: str | None = None,
) -> Landscape:
    """L(θ₀ + Σ_i t_i d_i) on a grid of t (1-D: (n,), 2-D: (n, n)), and its quadratic model.

    ``directions``: "random" (filter-normalised, Li et al. 2018: see ``filter_normalized``;
    ``biases`` "zero" or "keep"), a ``Report`` or ``EigenResult`` (its top eigenvectors,
    unit norm), or an array (P,) / (P, d); ``dims`` 1 or 2 (default: 1, or the array's d).
    ``span``: the grid runs over t_i ∈ [−span_i, span_i] (default 1 for random directions,
    else the t where ½|λ_i|t² = 4·L(θ₀)); ``points`` per axis (odd: t = 0 is on the grid;
    default 41 in 1-D, 21 in 2-D). The loss weighs batches as the operators (d_b / D).
    Quadratic model: q(t) = L(θ₀) + gᵀD t + ½ tᵀ(DᵀHD) t with g, H the gradient and Hessian
    at θ₀ (one gradient, one product of d columns); λ_i = d_iᵀHd_i / ‖d_i‖² is reported.
    The parameters are restored bit for bit (also on error); no graph is kept.
    """
    H = HessianOperator(
        model, loss_fn, data, params=params, batch_size_fn=batch_size_fn, reduction=reduction
    )
    D, kind, names = resolve(directions, H.params, dims, seed, biases)
    loss = WholeDataLoss(model, loss_fn, data, H.params, batch_size_fn, reduction)
    return _slice(H, loss, D, kind, names, span, points)


def eigen_slices(
    model: nn.Module,
    loss_fn: Callable,
    data: Iterable,
    result: Any,
    n: int = 3,
    *,
    span: float | None = None,
    points: int | None = None,
    params: Iterable[torch.Tensor] | None = None,
    batch_size_fn: Callable[[Any], int] | None = None,
    progress: Callable[[], None] | None = None,
) -> list[Landscape]:
    """The 1-D ``landscape`` along each of the first ``n`` top eigenvectors v_1 .. v_n of
    ``result`` (a ``Report`` or ``EigenResult``), sharing one Hessian for the quadratic
    models; ``progress()`` is called after each slice."""
    H = HessianOperator(model, loss_fn, data, params=params, batch_size_fn=batch_size_fn)
    D, _ = eigen_directions(result, n)
    loss = WholeDataLoss(model, loss_fn, data, H.params, batch_size_fn)
    slices = []
    for i in range(n):
        slices.append(
            _slice(H, loss, D[:, i : i + 1], "eigenvector", [f"$v_{i + 1}$"], span, points)
        )
        if progress is not None:
            progress()
    return slices


def _slice(H, loss: WholeDataLoss, D: torch.Tensor, kind: str, names, span, points) -> Landscape:
    """The loss on the grid along the columns of D, with the quadratic model from H."""
    D = D.to(H.device)
    loss0 = loss()
    slopes = (D.T @ H.gradient().to(torch.float64)).cpu().numpy()
    M = (D.T @ H.torch_matmat(D.to(H.torch_dtype)).to(torch.float64)).cpu().numpy()
    M = (M + M.T) / 2
    norms = D.norm(dim=0).cpu().numpy()
    rayleigh = np.diag(M) / norms**2
    coords = _grid(D.shape[1], span, points, kind, loss0, rayleigh)
    values = _evaluate(loss, H.flatten(H.params).detach(), D, coords)
    return Landscape(
        coords=coords,
        loss=values,
        quadratic=_quadratic(coords, loss0, slopes, M),
        loss0=loss0,
        slopes=slopes,
        curvatures=M,
        rayleigh=rayleigh,
        norms=norms,
        kind=kind,
        names=names,
        model=type(H.model).__name__,
    )


def _grid(d: int, span, points, kind: str, loss0: float, rayleigh: np.ndarray) -> list[np.ndarray]:
    """One axis per direction, symmetric about 0, t = 0 exactly on it."""
    n = points or (41 if d == 1 else 21)
    if n < 3 or n % 2 == 0:
        raise ValueError(f"points must be an odd integer >= 3 (t = 0 on the grid); got {n}")
    spans = np.broadcast_to(
        np.asarray(span if span is not None else _default_spans(kind, loss0, rayleigh), float), (d,)
    )
    if not (np.isfinite(spans).all() and (spans > 0).all()):
        raise ValueError(f"span must be positive and finite; got {span!r}")
    axes = []
    for s in spans:
        t = np.linspace(-s, s, n)
        t[n // 2] = 0.0
        axes.append(t)
    return axes


def _default_spans(kind: str, loss0: float, rayleigh: np.ndarray) -> np.ndarray:
    if kind.startswith("random"):
        return np.ones_like(rayleigh)
    spans = [
        math.sqrt(2 * REACH * loss0 / abs(lam)) if lam and loss0 > 0 else 1.0 for lam in rayleigh
    ]
    return np.asarray(spans)


def _evaluate(loss: WholeDataLoss, theta0: torch.Tensor, D: torch.Tensor, coords) -> np.ndarray:
    """L at every grid point (shape of the grid); the parameters are restored after."""
    theta0 = theta0.to(torch.float64)
    grid = np.stack(np.meshgrid(*coords, indexing="ij"), -1)  # (n, [n,] d)
    out = np.empty(grid.shape[:-1])
    with loss.displaced() as move:
        for index in np.ndindex(out.shape):
            t = torch.as_tensor(grid[index], dtype=torch.float64, device=D.device)
            move(theta0 + D @ t)
            out[index] = loss()
    return out


def _quadratic(coords, loss0: float, slopes: np.ndarray, M: np.ndarray) -> np.ndarray:
    """q(t) = L₀ + gᵀD t + ½ tᵀ M t on the grid."""
    grid = np.stack(np.meshgrid(*coords, indexing="ij"), -1)
    return loss0 + grid @ slopes + 0.5 * np.einsum("...i,ij,...j->...", grid, M, grid)
