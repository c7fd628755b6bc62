"""Checks of a saved KFAC / EKFAC state before it replaces an operator's factors.

Settings: every saved setting that shapes the matrix must equal the operator's own.
Tensors, per layer or fallback block: the keys and shapes the model needs, finite values
and, by role (a grouped factor (g, n, n) is checked group by group),
  G, A, F                 symmetric (‖M − Mᵀ‖_F <= 1000 eps ‖M‖_F) and PSD
                          (λ_min >= −√eps · max |λ|); F: an exact fallback block
  G_diag, A_diag, F_diag  nonnegative (diagonal factors: forward-only's G, an embedding's A,
                          a diagonal fallback block)
  Q_G, Q_A                orthonormal columns (max |QᵀQ − I| <= √eps)
  E0, E1                  nonnegative (sums of squares)
with eps that of the saved tensor's dtype; checks run in float64 on the tensor's device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

_MISSING = object()


def check_settings(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    """Refuse a saved state whose settings differ from ``mine`` (setting -> value)."""
    for key, value in mine.items():
        theirs = saved.get(key, _MISSING)
        if theirs is _MISSING:
            raise ValueError(
                f"the saved state has no setting {key!r} (this operator has {key}={value!r}): "
                "it was saved by another version; recompute the factors and save them again"
            )
        if theirs != value:
            raise ValueError(
                f"the saved state has {key}={theirs!r}, this operator {key}={value!r}: the "
                "saved factors do not fit this operator (they stand for another matrix). "
                f"Build the operator with {key}={theirs!r} to load them"
            )


def check_layers(saved: Any, expected: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Refuse saved layers whose names, keys, shapes or values do not fit ``expected``."""
    if not isinstance(saved, Mapping) or set(saved) != set(expected):
        names = sorted(saved) if isinstance(saved, Mapping) else saved
        raise ValueError(
            f"the saved factors are for layers {names}, this operator has layers {sorted(expected)}"
        )
    for name, tensors in expected.items():
        theirs = saved[name]
        if not isinstance(theirs, Mapping):
            raise ValueError(f"layer '{name}': the saved factors are a {type(theirs).__name__}")
        extra = sorted(set(theirs) - set(tensors))
        if extra:
            raise ValueError(
                f"layer '{name}': saved factors {extra} are not factors of this operator "
                f"(it has {sorted(tensors)}); the factors do not fit this model"
            )
        for key, t in tensors.items():
            check_factor(name, key, theirs.get(key), tuple(t.shape))


def check_factor(layer: str, key: str, t: Any, shape: tuple[int, ...]) -> None:
    """One saved factor: a floating tensor of ``shape`` with finite values fit for its role."""
    where = f"layer '{layer}': saved factor {key}"
    if t is None:
        raise ValueError(f"{where} is missing; the factors do not fit this model")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{where} is a {type(t).__name__}, not a tensor")
    if tuple(t.shape) != shape:
        raise ValueError(
            f"{where} has shape {tuple(t.shape)}, the model needs {shape}; the factors do not "
            "fit this model"
        )
    if not t.is_floating_point():
        raise ValueError(f"{where} has dtype {t.dtype}; factors are float32 or float64 tensors")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where} holds NaN or inf values: the saved state is corrupt")
    eps = torch.finfo(t.dtype).eps
    M = t.detach().double()
    groups = M if M.ndim == 3 else M.unsqueeze(0)
    if key in ("G", "A", "F"):
        for m in groups:
            _check_symmetric_psd(where, m, eps)
    elif key.startswith("Q_"):
        for m in groups:
            _check_orthonormal(where, m, eps)
    elif (key.startswith("E") or key.endswith("_diag")) and bool((M < 0).any()):
        what = (
            "EKFAC's eigenvalues are sums of squares"
            if key.startswith("E")
            else ("a diagonal factor of a Gram matrix is nonnegative")
        )
        raise ValueError(
            f"{where} has negative entries (min {float(M.min()):.3g}): {what}, so the saved "
            "state is corrupt"
        )


def _check_symmetric_psd(where: str, M: torch.Tensor, eps: float) -> None:
    asym = float((M - M.T).norm())
    if asym > 1e3 * eps * float(M.norm()):
        raise ValueError(
            f"{where} is not symmetric (‖M − Mᵀ‖_F / ‖M‖_F = {asym / float(M.norm()):.3g}): "
            "the saved state is corrupt"
        )
    values = torch.linalg.eigvalsh((M + M.T) / 2)
    scale = float(values.abs().max())
    if float(values[0]) < -(eps**0.5) * scale:
        raise ValueError(
            f"{where} is not positive semi-definite (eigenvalue {float(values[0]):.3g}, largest "
            f"|λ| {scale:.3g}): Kronecker factors are Gram matrices, so the saved state is corrupt"
        )


def _check_orthonormal(where: str, Q: torch.Tensor, eps: float) -> None:
    eye = torch.eye(Q.shape[1], dtype=Q.dtype, device=Q.device)
    err = float((Q.T @ Q - eye).abs().max())
    if err > eps**0.5:
        raise ValueError(
            f"{where} is not an orthonormal basis (max |QᵀQ − I| = {err:.3g}): the saved state "
            "is corrupt"
        )
