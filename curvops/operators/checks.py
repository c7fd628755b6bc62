"""Checks that turn silent wrong numbers into clear errors."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd


def check_module_modes(model: nn.Module) -> None:
    """Refuse train-mode BatchNorm (batch-dependent, mutates running stats) and Dropout."""
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.training:
            raise ValueError(
                f"{type(module).__name__} '{name}' is in train mode: its output depends on the "
                "other points of the batch and every forward pass updates its running "
                "statistics, so there is no per-sample curvature. Call model.eval() first"
            )
        if isinstance(module, _DropoutNd) and module.training and module.p > 0:
            raise ValueError(
                f"{type(module).__name__} '{name}' is in train mode: the model is random, so "
                "every product would see another function. Call model.eval() first"
            )


def check_finite(result: torch.Tensor, what: str) -> None:
    """Raise FloatingPointError if ``result`` holds NaN or inf."""
    if not bool(torch.isfinite(result).all()):
        raise FloatingPointError(
            f"NaN or inf in the {what}: check the parameters and data for NaN/inf values and "
            "the loss for overflow (e.g. huge logits); use float64 if the model is ill-scaled"
        )


def check_params_finite(params, names) -> None:
    for p, name in zip(params, names):
        if not bool(torch.isfinite(p).all()):
            raise FloatingPointError(f"parameter '{name}' holds NaN or inf values")


def assert_deterministic(first: torch.Tensor, second: torch.Tensor, what: str) -> None:
    """Two evaluations of the same quantity must agree (to rounding)."""
    rtol = 1e-4 if first.dtype == torch.float32 else 1e-9
    scale = first.abs().max().clamp(min=1e-30)
    if float((first - second).abs().max()) > rtol * float(scale):
        raise RuntimeError(
            f"the model is not deterministic: two evaluations of the {what} differ. Put the "
            "model in eval mode (dropout), and remove random or data-dependent layers"
        )
