"""Closed forms of the supported losses in output space (GGN, Fisher, KFAC, EKFAC).

For a batch output f (B, ...) and a batch loss L = s · Σ_t ℓ_t (s = 1/d_b for reduction
"mean", d_b the batch's denominator, see ``curvops.core.denominators``; s = 1 for "sum"),
every term is ℓ_t = ω_t ℓ̃(f_t, ỹ_t): a frequency weight ω_t ≥ 0 (class weights,
BCE weight / pos_weight; 0 for an ignored target; 1 without weights) times the negative
log-likelihood ℓ̃ of an effective target ỹ_t. Each class gives
  - ``hessian_matmat(f, y, U)``:   ∇²_f L · U = s Σ_t ω_t ∇²ℓ̃_t U          U, out: (k, *f.shape)
  - ``sampled_grads(f, y, M, s)``: √ω_t ∇_f ℓ̃(f, ŷ_m), ŷ_m ~ p(y | f)     out: (M, *f.shape)
  - ``true_grads(f, y)``:          √ω_t ∇_f ℓ̃(f, ỹ_t) = ∇_f ℓ_t / √ω_t     out: f.shape
  - ``hessian_sqrt(f, y)``:        √ω_t S_t, Σ_k S_k S_kᵀ = ∇²ℓ̃ per term    out: (K, *f.shape)
    (K: the feature axis, the last one for MSE/BCE, the classes for CE; unscaled by s)
with E_ŷ[∇ℓ̃ ∇ℓ̃ᵀ] = ∇²ℓ̃ per term, so the MC Fisher estimates the type-2 GGN, and the GGN,
the MC and the empirical Fisher are all linear in ω: a term of weight ω counts as ω copies.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from curvops.core.denominators import loss_denominator, loss_reduction
from curvops.core.lm import loss_parts
from curvops.core.seeds import PointSampler

SUPPORTED = "nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss"

__all__ = ["SUPPORTED", "OutputLoss", "loss_reduction", "output_loss", "target_checker"]


class OutputLoss(ABC):
    """The contract of a loss adapter: closed forms in output space (see the module doc).

    Subclasses give the unweighted per-term forms (``_hessian_matmat``, ``_sampled_grads``,
    ``_hessian_sqrt``), the weighted gradient ``_loss_grads`` = ∇_f ℓ_t and ``weights``."""

    def __init__(self, loss_fn: nn.Module) -> None:
        self.reduction = loss_reduction(loss_fn)
        self.count = loss_denominator(loss_fn)

    def scale(self, f: torch.Tensor, y: torch.Tensor, denominator: float | None = None) -> float:
        """s: 1 / d_b under "mean" (d_b: ``denominator`` when the caller knows it, a
        batch's ``Batch.denominator``: no count read from the device), 1 under "sum"."""
        if self.reduction != "mean":
            return 1.0
        return 1.0 / (self.count(y, f.shape[0]) if denominator is None else denominator)

    def term_axes(self, f: torch.Tensor) -> tuple[int, ...]:
        """Axes of f (besides the batch axis) along which ``hessian_sqrt`` columns repeat."""
        return tuple(range(1, f.ndim - 1))

    def weights(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """ω, broadcastable against f; None when every term weighs 1."""
        return None

    def check_sampling(self) -> None:
        """Raise if the loss is no likelihood to sample labels from (MC Fisher)."""
        return None

    def hessian_matmat(
        self, f: torch.Tensor, y: torch.Tensor, U: torch.Tensor, denominator: float | None = None
    ) -> torch.Tensor:
        """∇²_f L · U for U (k, *f.shape) (``denominator``: d_b, as in ``scale``)."""
        HU = self._hessian_matmat(f, U)
        w = self.weights(f, y)
        return (HU if w is None else HU * w) * self.scale(f, y, denominator)

    def sampled_grads(
        self, f: torch.Tensor, y: torch.Tensor, num_samples: int, sampler: PointSampler
    ) -> torch.Tensor:
        """√ω ∇_f ℓ̃(f, ŷ_m) for ŷ_m ~ p(y | f): (M, *f.shape); draws keyed per data point."""
        return _times_sqrt(self._sampled_grads(f, num_samples, sampler), self.weights(f, y))

    def true_grads(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇_f ℓ_t / √ω_t (0 where ω_t = 0): f.shape; the plain gradient without weights."""
        g, w = self._loss_grads(f, y), self.weights(f, y)
        if w is None:
            return g
        return torch.where(w > 0, g * torch.rsqrt(w.clamp(min=1e-300)), 0.0)

    def hessian_sqrt(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """√ω S (K, *f.shape) with Σ_k S_k S_kᵀ = ∇²_f ℓ̃ per term (unscaled by s)."""
        return _times_sqrt(self._hessian_sqrt(f), self.weights(f, y))

    @abstractmethod
    def _hessian_matmat(self, f: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """∇²ℓ̃ U per term, U (k, *f.shape)."""

    @abstractmethod
    def _sampled_grads(self, f: torch.Tensor, num_samples: int, sampler) -> torch.Tensor:
        """∇_f ℓ̃(f, ŷ_m), ŷ_m ~ p(y | f): (M, *f.shape)."""

    @abstractmethod
    def _loss_grads(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇_f ℓ_t, weights included: f.shape."""

    @abstractmethod
    def _hessian_sqrt(self, f: torch.Tensor) -> torch.Tensor:
        """S (K, *f.shape) with Σ_k S_k S_kᵀ = ∇²ℓ̃ per term."""

    def check_targets(self, f: torch.Tensor, y: torch.Tensor) -> None:
        if y.shape != f.shape:
            raise ValueError(
                f"targets of shape {tuple(y.shape)} do not match the model output "
                f"{tuple(f.shape)} for {type(self).__name__}"
            )


class MSE(OutputLoss):
    """ℓ = (f − y)²: ∇²ℓ = 2I; Gaussian likelihood with variance 1/2."""

    def _hessian_matmat(self, f, U):
        return U * 2.0

    def _sampled_grads(self, f, num_samples, sampler):
        eps = sampler.normal((num_samples, *f.shape), f.dtype)
        return math.sqrt(2.0) * eps  # 2 (f − ŷ), ŷ = f + ε / √2

    def _loss_grads(self, f, y):
        return 2.0 * (f - y)

    def _hessian_sqrt(self, f):
        return math.sqrt(2.0) * _feature_eye(f)  # ∇²ℓ = 2I = (√2 I)(√2 I)ᵀ


class BCEWithLogits(OutputLoss):
    """ℓ = −w [p y log σ(f) + (1−y) log(1−σ(f))] (w: ``weight``, p: ``pos_weight``, both
    optional): ω = w (p y + 1 − y), ∇ℓ = ω σ − w p y, ∇²ℓ = ω σ(1−σ)."""

    def __init__(self, loss_fn: nn.Module) -> None:
        super().__init__(loss_fn)
        self.weight: torch.Tensor | None = loss_fn.weight  # type: ignore[assignment]
        self.pos_weight: torch.Tensor | None = loss_fn.pos_weight  # type: ignore[assignment]

    def check_targets(self, f: torch.Tensor, y: torch.Tensor) -> None:
        super().check_targets(f, y)
        if not y.is_floating_point():
            raise ValueError(
                f"BCEWithLogitsLoss needs floating-point targets (0./1. or probabilities), "
                f"got {y.dtype}: pass y.float()"
            )

    def check_sampling(self) -> None:
        if self.pos_weight is not None:
            raise ValueError(
                "the Monte-Carlo Fisher is undefined for BCEWithLogitsLoss(pos_weight=...): "
                "pos_weight changes the loss of a positive label, so it is no longer the "
                "negative log-likelihood of the model's Bernoulli distribution to sample labels "
                "from. Use the exact GGN (mode='exact' / fisher='type2') or the empirical "
                "Fisher, or drop pos_weight"
            )

    def weights(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        w = None if self.weight is None else self.weight.to(f)
        if self.pos_weight is not None:
            positive = self.pos_weight.to(f) * y + (1 - y)
            w = positive if w is None else w * positive
        return None if w is None else torch.broadcast_to(w, f.shape)

    def _hessian_matmat(self, f, U):
        p = torch.sigmoid(f)
        return U * (p * (1 - p))

    def _sampled_grads(self, f, num_samples, sampler):
        p = torch.sigmoid(f).expand(num_samples, *f.shape)
        return p - (sampler.uniform(tuple(p.shape), f.dtype) < p).to(f.dtype)

    def _loss_grads(self, f, y):
        positive = y if self.pos_weight is None else self.pos_weight.to(f) * y
        w = self.weights(f, y)
        g = torch.sigmoid(f) * (1.0 if w is None else w)
        return g - positive * (1.0 if self.weight is None else self.weight.to(f))

    def _hessian_sqrt(self, f):
        p = torch.sigmoid(f)
        return _feature_eye(f) * torch.sqrt(p * (1 - p))  # diagonal: √(σ(1−σ))


class CrossEntropy(OutputLoss):
    """ℓ = −Σ_c a_c log softmax(f)_c, classes on axis 1, with the target mass a: class
    index y: (1−ε) w_y e_y + ε w / C (0 if y is ``ignore_index``); probabilities y:
    w ∘ ((1−ε) y + ε / C) (w: class weights, ε: label smoothing). ω = Σ_c a_c,
    ∇ℓ = ω p − a, ∇²ℓ = ω (diag(p) − p pᵀ). The MC Fisher weighs a point by its own
    target's ω (a point of class weight w counts w times); labels come from the model."""

    def __init__(self, loss_fn: nn.Module) -> None:
        super().__init__(loss_fn)
        self.class_weight: torch.Tensor | None = loss_fn.weight  # type: ignore[assignment]
        self.ignore_index: int = loss_fn.ignore_index  # type: ignore[assignment]
        self.label_smoothing: float = loss_fn.label_smoothing  # type: ignore[assignment]

    def check_targets(self, f: torch.Tensor, y: torch.Tensor) -> None:
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
                f"outputs {tuple(f.shape)} (classes on axis 1){_lm_hint(f, y)}"
            )
        self._check_range(y[y != self.ignore_index], f.shape[1])

    @staticmethod
    def _check_range(y, num_classes):
        if y.numel() and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(
                f"class-index targets must lie in [0, {num_classes}); got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )

    def term_axes(self, f: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(2, f.ndim))

    def _class_weights(self, f: torch.Tensor) -> torch.Tensor:
        """w (C,), ones without ``weight``."""
        if self.class_weight is None:
            return f.new_ones(f.shape[1])
        return self.class_weight.to(f)

    def _mass(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The target mass a (B, C, ...) (see the class doc)."""
        C, eps, w = f.shape[1], self.label_smoothing, self._class_weights(f)
        w_b = w.view(1, C, *([1] * (f.ndim - 2)))
        if y.is_floating_point():
            return w_b * (y * (1 - eps) + eps / C)
        valid = (y != self.ignore_index).unsqueeze(1).to(f.dtype)
        onehot = nn.functional.one_hot(y.clamp(0, C - 1), C).to(f.dtype)
        return valid * (torch.movedim(onehot, -1, 1) * (1 - eps) + eps / C) * w_b

    def weights(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if y.is_floating_point():
            return self._mass(f, y).sum(dim=1, keepdim=True)
        w, eps = self._class_weights(f), self.label_smoothing
        valid = (y != self.ignore_index).to(f.dtype)
        omega = valid * ((1 - eps) * w[y.clamp(0, f.shape[1] - 1)] + eps * w.mean())
        return omega.unsqueeze(1)  # (B, 1, ...)

    def _hessian_matmat(self, f, U):
        p = torch.softmax(f, dim=1)
        return p * U - p * (p * U).sum(dim=2, keepdim=True)  # U: (k, B, C, ...), class axis 2

    def _sampled_grads(self, f, num_samples, sampler):
        """Classes by inverse CDF: ŷ = #{c : cdf_c < u}, one u per (sample, point, position)."""
        p = torch.softmax(f, dim=1)
        C = f.shape[1]
        u = sampler.uniform((num_samples, f.shape[0], *f.shape[2:]), torch.float64)
        cdf = torch.cumsum(p.to(torch.float64), dim=1)  # (B, C, ...)
        draws = (cdf.unsqueeze(0) < u.unsqueeze(2)).sum(dim=2).clamp(max=C - 1)  # (M, B, ...)
        onehot = torch.movedim(torch.nn.functional.one_hot(draws, C).to(f.dtype), -1, 2)
        return p - onehot

    def _loss_grads(self, f, y):
        a = self._mass(f, y)
        return a.sum(dim=1, keepdim=True) * torch.softmax(f, dim=1) - a

    def _hessian_sqrt(self, f):
        """S = diag(√p) − p √pᵀ (S Sᵀ = diag(p) − p pᵀ): column k is √p_k (e_k − p)."""
        p = torch.softmax(f, dim=1)
        eye = torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
        eye = eye.reshape(f.shape[1], 1, f.shape[1], *([1] * (f.ndim - 2)))  # (K, 1, C, ...)
        sqrt_pk = torch.movedim(torch.sqrt(p), 1, 0).unsqueeze(2)  # (K, B, 1, ...)
        return sqrt_pk * (eye - p)


def output_loss(loss_fn: Callable) -> OutputLoss:
    """The closed form for ``loss_fn`` (a ``TokenLoss``: its cross-entropy), or a
    ValueError naming the supported losses."""
    loss_fn = loss_parts(loss_fn).loss_fn
    kinds: dict[type, type[MSE] | type[CrossEntropy] | type[BCEWithLogits]] = {
        nn.MSELoss: MSE,
        nn.CrossEntropyLoss: CrossEntropy,
        nn.BCEWithLogitsLoss: BCEWithLogits,
    }
    kind = kinds.get(type(loss_fn))
    if kind is None:
        raise ValueError(
            f"loss {type(loss_fn).__name__} is not supported here; supported: {SUPPORTED} "
            "(HessianOperator accepts any differentiable loss)"
        )
    return kind(loss_fn)  # type: ignore[arg-type]  # an nn.Module: its type is a key above


def target_checker(loss_fn: Callable) -> OutputLoss | None:
    """The closed form of a supported loss, to check targets against outputs; else None."""
    try:
        return output_loss(loss_fn)
    except ValueError:
        return None


def _lm_hint(f: torch.Tensor, y: torch.Tensor) -> str:
    """Advice for a language model's (B, S, V) logits against (B, S) labels."""
    if f.ndim != 3 or tuple(y.shape) != tuple(f.shape[:2]):
        return ""
    return (
        ": a language model's logits (B, S, V)? Use curvops.CausalLMLoss() (the next token, "
        "as transformers computes it) or curvops.MaskedLMLoss() as the loss"
    )


def _times_sqrt(t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """t (K, *f.shape) times √w (w broadcastable against f), or t itself."""
    return t if w is None else t * torch.sqrt(w)


def _feature_eye(f: torch.Tensor) -> torch.Tensor:
    """(K, *f.shape) with a 1 where the last axis equals k (K = f.shape[-1]; K = 1 for (B,))."""
    if f.ndim < 2:
        return torch.ones((1, *f.shape), dtype=f.dtype, device=f.device)
    K = f.shape[-1]
    eye = torch.eye(K, dtype=f.dtype, device=f.device)
    return eye.reshape(K, *([1] * (f.ndim - 1)), K).expand(K, *f.shape)
