"""Closed forms of the supported losses in output space (GGN, Fisher, KFAC, EKFAC).

For a batch output f (B, ...) and a batch loss L = s · Σ_t ℓ_t (s = 1/R for reduction
"mean", R = number of terms averaged; s = 1 for "sum"), each class gives
  - ``hessian_matmat(f, y, U)``:   ∇²_f L · U                      U, out: (k, *f.shape)
  - ``sampled_grads(f, y, M, gen)``: ∇_f ℓ(f, ŷ_m), ŷ_m ~ p(y | f) out: (M, *f.shape)
  - ``true_grads(f, y)``:          ∇_f ℓ(f, y)                     out: f.shape
  - ``hessian_sqrt(f, y)``:        S with Σ_k S_k S_kᵀ = ∇²_f ℓ per term  out: (K, *f.shape)
    (K: the feature axis, the last one for MSE/BCE, the classes for CE; unscaled by s)
with E_ŷ[∇ℓ ∇ℓᵀ] = ∇²ℓ per term, so the MC Fisher estimates the type-2 GGN.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from curvops.core.seeds import PointSampler

SUPPORTED = "nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss"


def loss_reduction(loss_fn, reduction: str | None = None) -> str:
    """The reduction of ``loss_fn`` ("mean" or "sum"); a plain callable is taken as "mean"."""
    reduction = reduction or getattr(loss_fn, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss reduction {reduction!r} is not supported: curvops needs a scalar loss; "
            "use reduction='mean' or 'sum'"
        )
    return reduction


class OutputLoss(ABC):
    """The contract of a loss adapter: closed forms in output space (see the module doc);
    ``scale(f, y)`` is s, the reduction's factor."""

    def __init__(self, loss_fn: nn.Module) -> None:
        self.reduction = loss_reduction(loss_fn)

    def scale(self, f: torch.Tensor, y: torch.Tensor) -> float:
        return 1.0 / self.num_terms(f, y) if self.reduction == "mean" else 1.0

    def num_terms(self, f: torch.Tensor, y: torch.Tensor) -> int:
        return f.numel()

    def term_axes(self, f: torch.Tensor) -> tuple[int, ...]:
        """Axes of f (besides the batch axis) along which ``hessian_sqrt`` columns repeat."""
        return tuple(range(1, f.ndim - 1))

    @abstractmethod
    def hessian_matmat(self, f: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """∇²_f L · U for U (k, *f.shape)."""

    @abstractmethod
    def sampled_grads(
        self, f: torch.Tensor, y: torch.Tensor, num_samples: int, sampler: PointSampler
    ) -> torch.Tensor:
        """∇_f ℓ(f, ŷ_m) for ŷ_m ~ p(y | f): (M, *f.shape); draws keyed per data point."""

    @abstractmethod
    def true_grads(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇_f ℓ(f, y): f.shape."""

    @abstractmethod
    def hessian_sqrt(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """S (K, *f.shape) with Σ_k S_k S_kᵀ = ∇²_f ℓ per term (unscaled by s)."""

    def check_targets(self, f: torch.Tensor, y: torch.Tensor) -> None:
        if y.shape != f.shape:
            raise ValueError(
                f"targets of shape {tuple(y.shape)} do not match the model output "
                f"{tuple(f.shape)} for {type(self).__name__}"
            )


class MSE(OutputLoss):
    """ℓ = (f − y)²: ∇²ℓ = 2I; Gaussian likelihood with variance 1/2."""

    def hessian_matmat(self, f, y, U):
        return U * (2.0 * self.scale(f, y))

    def sampled_grads(self, f, y, num_samples, sampler):
        eps = sampler.normal((num_samples, *f.shape), f.dtype)
        return math.sqrt(2.0) * eps  # 2 (f − ŷ), ŷ = f + ε / √2

    def true_grads(self, f, y):
        return 2.0 * (f - y)

    def hessian_sqrt(self, f, y):
        return math.sqrt(2.0) * _feature_eye(f)  # ∇²ℓ = 2I = (√2 I)(√2 I)ᵀ


class BCEWithLogits(OutputLoss):
    """ℓ = −y log σ(f) − (1−y) log(1−σ(f)): ∇²ℓ = σ(1−σ)."""

    def __init__(self, loss_fn: nn.Module) -> None:
        super().__init__(loss_fn)
        if loss_fn.weight is not None or loss_fn.pos_weight is not None:
            raise ValueError(
                "BCEWithLogitsLoss with weight or pos_weight is not supported for GGN/KFAC; "
                "use the unweighted loss (HessianOperator accepts any loss)"
            )

    def hessian_matmat(self, f, y, U):
        p = torch.sigmoid(f)
        return U * (p * (1 - p) * self.scale(f, y))

    def sampled_grads(self, f, y, num_samples, sampler):
        p = torch.sigmoid(f).expand(num_samples, *f.shape)
        return p - (sampler.uniform(tuple(p.shape), f.dtype) < p).to(f.dtype)

    def true_grads(self, f, y):
        return torch.sigmoid(f) - y

    def hessian_sqrt(self, f, y):
        p = torch.sigmoid(f)
        return _feature_eye(f) * torch.sqrt(p * (1 - p))  # diagonal: √(σ(1−σ))


class CrossEntropy(OutputLoss):
    """ℓ = −log softmax(f)[y], classes on axis 1: ∇²ℓ = diag(p) − p pᵀ."""

    def __init__(self, loss_fn: nn.Module) -> None:
        super().__init__(loss_fn)
        if loss_fn.weight is not None:
            raise ValueError(
                "CrossEntropyLoss(weight=...) is not supported for GGN/KFAC; use the "
                "unweighted loss (HessianOperator accepts any loss)"
            )
        self.ignore_index: int = loss_fn.ignore_index
        self.label_smoothing: float = loss_fn.label_smoothing

    def check_targets(self, f, y):
        if f.ndim < 2:
            raise ValueError(f"CrossEntropyLoss needs outputs (B, C, ...), got {tuple(f.shape)}")
        if y.is_floating_point():
            if y.shape != f.shape:
                raise ValueError(
                    f"class-probability targets of shape {tuple(y.shape)} do not match the "
                    f"output {tuple(f.shape)}"
                )
            return
        expected = (f.shape[0], *f.shape[2:])
        if tuple(y.shape) != expected:
            raise ValueError(
                f"class-index targets have shape {tuple(y.shape)}, expected {expected} for "
                f"outputs {tuple(f.shape)} (classes on axis 1)"
            )
        valid = y != self.ignore_index
        if valid.all():
            self._check_range(y, f.shape[1])
        elif self.reduction == "mean":
            raise ValueError(
                "targets equal to ignore_index under reduction='mean' make the batch weights "
                "depend on the labels; use reduction='sum' or drop those targets"
            )
        else:
            self._check_range(y[valid], f.shape[1])

    @staticmethod
    def _check_range(y, num_classes):
        if y.numel() and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(
                f"class-index targets must lie in [0, {num_classes}); got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )

    def num_terms(self, f, y):
        return f.numel() // f.shape[1]

    def term_axes(self, f):
        return tuple(range(2, f.ndim))

    def _mask(self, f, y):
        if y.is_floating_point():
            return None
        return (y != self.ignore_index).unsqueeze(1).to(f.dtype)

    def hessian_matmat(self, f, y, U):
        p = torch.softmax(f, dim=1)
        HU = p * U - p * (p * U).sum(dim=2, keepdim=True)  # U: (k, B, C, ...), class axis 2
        mask = self._mask(f, y)
        if mask is not None:
            HU = HU * mask
        return HU * self.scale(f, y)

    def sampled_grads(self, f, y, num_samples, sampler):
        """Classes by inverse CDF: ŷ = #{c : cdf_c < u}, one u per (sample, point, position)."""
        p = torch.softmax(f, dim=1)
        C = f.shape[1]
        u = sampler.uniform((num_samples, f.shape[0], *f.shape[2:]), torch.float64)
        cdf = torch.cumsum(p.to(torch.float64), dim=1)  # (B, C, ...)
        draws = (cdf.unsqueeze(0) < u.unsqueeze(2)).sum(dim=2).clamp(max=C - 1)  # (M, B, ...)
        onehot = torch.movedim(torch.nn.functional.one_hot(draws, C).to(f.dtype), -1, 2)
        g = p - onehot
        mask = self._mask(f, y)
        return g * mask if mask is not None else g

    def true_grads(self, f, y):
        p = torch.softmax(f, dim=1)
        if y.is_floating_point():
            target = y
        else:
            target = torch.nn.functional.one_hot(y.clamp(min=0), f.shape[1]).to(f.dtype)
            target = torch.movedim(target, -1, 1)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / f.shape[1]
        g = p - target
        mask = self._mask(f, y)
        return g * mask if mask is not None else g

    def hessian_sqrt(self, f, y):
        """S = diag(√p) − p √pᵀ (S Sᵀ = diag(p) − p pᵀ): column k is √p_k (e_k − p)."""
        p = torch.softmax(f, dim=1)
        eye = torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
        eye = eye.reshape(f.shape[1], 1, f.shape[1], *([1] * (f.ndim - 2)))  # (K, 1, C, ...)
        sqrt_pk = torch.movedim(torch.sqrt(p), 1, 0).unsqueeze(2)  # (K, B, 1, ...)
        S = sqrt_pk * (eye - p)
        mask = self._mask(f, y)
        return S * mask if mask is not None else S


def output_loss(loss_fn) -> OutputLoss:
    """The closed form for ``loss_fn``, or a ValueError naming the supported losses."""
    for cls, kind in ((nn.MSELoss, MSE), (nn.CrossEntropyLoss, CrossEntropy)):
        if type(loss_fn) is cls:
            return kind(loss_fn)
    if type(loss_fn) is nn.BCEWithLogitsLoss:
        return BCEWithLogits(loss_fn)
    raise ValueError(
        f"loss {type(loss_fn).__name__} is not supported here; supported: {SUPPORTED} "
        "(HessianOperator accepts any differentiable loss)"
    )


def target_checker(loss_fn) -> OutputLoss | None:
    """The closed form of a supported loss, to check targets against outputs; else None."""
    try:
        return output_loss(loss_fn)
    except ValueError:
        return None


def _feature_eye(f: torch.Tensor) -> torch.Tensor:
    """(K, *f.shape) with a 1 where the last axis equals k (K = f.shape[-1]; K = 1 for (B,))."""
    if f.ndim < 2:
        return torch.ones((1, *f.shape), dtype=f.dtype, device=f.device)
    K = f.shape[-1]
    eye = torch.eye(K, dtype=f.dtype, device=f.device)
    return eye.reshape(K, *([1] * (f.ndim - 1)), K).expand(K, *f.shape)
