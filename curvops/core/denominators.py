"""What a loss's reduction divides a batch by, read from the targets alone (no forward pass).

The operators are the curvature of the loss over the WHOLE data set. A torch loss with
reduction "mean" divides a batch's summed loss by its denominator d_b: the number of loss
terms (all elements for MSELoss, BCEWithLogitsLoss, ...; the targets for
CrossEntropyLoss / NLLLoss, Σ_n w_{y_n} over the targets that are not ``ignore_index``
with class weights), the batch size B (KLDivLoss "batchmean", a plain callable). Then
  L = Σ_b d_b L_b / D,   D = Σ_b d_b over the data (and the ranks),
so a batch weighs d_b / D under "mean" and 1 under "sum" (``batch_weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Denominator = Callable[[Any, int], float]  # (targets y, batch size B) -> d_b

_ELEMENTS = (
    nn.MSELoss,
    nn.L1Loss,
    nn.HuberLoss,
    nn.SmoothL1Loss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    nn.SoftMarginLoss,
    nn.PoissonNLLLoss,
    nn.HingeEmbeddingLoss,
)  # "mean": over every element of the (output-shaped) targets
_ROWS = (nn.MultiLabelMarginLoss, nn.MultiLabelSoftMarginLoss, nn.MultiMarginLoss)  # over B
_CLASSES = (nn.CrossEntropyLoss, nn.NLLLoss)  # over the targets, class-weighted


def loss_reduction(loss_fn: Any, override: str | None = None) -> str:
    """ "mean" (any reduction that divides: mean, batchmean) or "sum", else a ValueError.

    A plain callable is taken as a mean over the B points of a batch unless ``override``
    says "sum"; a torch loss module's own reduction decides and may not be overridden.
    """
    own = getattr(loss_fn, "reduction", None) if isinstance(loss_fn, nn.Module) else None
    if override is not None and own is not None and override != own:
        raise ValueError(
            f"reduction={override!r} was given, but the loss {type(loss_fn).__name__} has "
            f"reduction={own!r}: set it on the loss itself, e.g. "
            f"nn.{type(loss_fn).__name__}(reduction={override!r}) (reduction= is for plain "
            "callables)"
        )
    reduction = override or own or "mean"
    if reduction == "batchmean" and isinstance(loss_fn, nn.KLDivLoss):
        return "mean"
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss reduction {reduction!r} is not supported: curvops needs a scalar loss; "
            "use reduction='mean' or 'sum'"
        )
    return reduction


def loss_denominator(loss_fn: Any) -> Denominator:
    """The function (y, B) -> d_b of ``loss_fn`` (see the module doc); a ValueError for a
    torch loss whose mean curvops cannot count from the targets."""
    if isinstance(loss_fn, _CLASSES):
        return _ClassTerms(loss_fn)
    if isinstance(loss_fn, nn.KLDivLoss):
        return _rows if loss_fn.reduction == "batchmean" else _elements
    if isinstance(loss_fn, _ELEMENTS):
        return _elements
    if isinstance(loss_fn, _ROWS) or not _is_torch_loss(loss_fn):
        return _rows
    if getattr(loss_fn, "reduction", "mean") == "sum":
        return _rows  # weight 1 per batch: the count only skips empty batches
    raise ValueError(
        f"{type(loss_fn).__name__}(reduction='mean') is not supported: curvops cannot tell "
        "from the targets what its mean divides by. Use reduction='sum', or pass a plain "
        "function that returns the batch mean (a batch of B points then weighs B / N)"
    )


def check_shapes(loss_fn: Any, output: Any, y: Any) -> None:
    """Elementwise torch losses: output and targets of one shape (torch would broadcast
    them, and average over the broadcast shape, not over the targets)."""
    if not isinstance(loss_fn, (*_ELEMENTS, nn.KLDivLoss)):
        return
    tensors = isinstance(output, torch.Tensor) and isinstance(y, torch.Tensor)
    if tensors and output.shape != y.shape:
        raise ValueError(
            f"targets of shape {tuple(y.shape)} do not match the model output "
            f"{tuple(output.shape)}: {type(loss_fn).__name__} would broadcast them; "
            "reshape the targets (e.g. y.view_as(output))"
        )


def _is_torch_loss(loss_fn: Any) -> bool:
    return type(loss_fn).__module__ == "torch.nn.modules.loss"


def _elements(y: Any, batch_size: int) -> float:
    return float(y.numel()) if isinstance(y, torch.Tensor) else float(batch_size)


def _rows(y: Any, batch_size: int) -> float:
    return float(batch_size)


class _ClassTerms:
    """d_b of CrossEntropyLoss / NLLLoss: Σ w_{y_n} (or the count) over targets that are not
    ``ignore_index``; class-probability targets: one term per position (weights do not
    divide)."""

    def __init__(self, loss_fn: nn.Module) -> None:
        self.weight: torch.Tensor | None = loss_fn.weight  # type: ignore[assignment]
        self.ignore_index = int(loss_fn.ignore_index)  # type: ignore[arg-type]

    def __call__(self, y: Any, batch_size: int) -> float:
        if not isinstance(y, torch.Tensor):
            return float(batch_size)
        if y.is_floating_point():  # probabilities (B, C, ...)
            return float(y.numel() // y.shape[1]) if y.ndim >= 2 else 1.0
        valid = y != self.ignore_index
        if self.weight is None:
            return float(valid.sum())
        w = self.weight.to(y.device)
        index = y.clamp(0, w.numel() - 1)  # out-of-range labels are refused at the forward
        return float(torch.where(valid, w[index], 0).sum())


def batch_weight(reduction: str, denominator: float, total: float) -> float:
    """Weight of one batch's loss in the whole-data loss: d_b / D for "mean", 1 for "sum"."""
    return denominator / total if reduction == "mean" else 1.0
