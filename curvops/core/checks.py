"""Checks that turn silent wrong numbers into clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd


def check_count(name: str, n: object, least: int) -> None:
    """An integer (not a bool) >= ``least``, else a ValueError naming the argument."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < least:
        raise ValueError(f"{name} must be an integer >= {least}; got {n!r}")


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool)
    ):
        raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")


def check_module_modes(model: nn.Module) -> None:
    """Refuse train-mode BatchNorm (batch-dependent, mutates running stats) and Dropout."""
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.training:
            raise ValueError(
                f"{type(module).__name__} '{name}' is in train mode: its output depends on the "
                "other points of the batch and every forward pass updates its running "
                "statistics, so the curvature would depend on how the data is batched. Call "
                "model.eval() first"
            )
        if isinstance(module, _DropoutNd) and module.training and module.p > 0:
            raise ValueError(
                f"{type(module).__name__} '{name}' is in train mode: the model is random, so "
                "every product would see another function. Call model.eval() first"
            )


def tensor_output(f: object, who: str) -> torch.Tensor:
    """The model's output, which must be a tensor for ``who`` (GGN, KFAC: output-space math)."""
    if not isinstance(f, torch.Tensor):
        raise TypeError(
            f"the model returned a {type(f).__name__}; {who} needs a tensor output (or one "
            "with .logits, as a Hugging Face ModelOutput): wrap the model so that forward "
            "returns the logits, or return a ModelOutput (return_dict=True)"
        )
    return f


def check_finite(result: torch.Tensor, what: str) -> None:
    """Raise FloatingPointError if ``result`` holds NaN or inf."""
    if not bool(torch.isfinite(result).all()):
        raise FloatingPointError(
            f"NaN or inf in the {what}: check the parameters and data for NaN/inf values and "
            "the loss for overflow (e.g. huge logits); use float64 if the model is ill-scaled"
        )


def check_params_finite(params: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    for p, name in zip(params, names):
        if not bool(torch.isfinite(p).all()):
            raise FloatingPointError(
                f"parameter '{name}' holds NaN or inf values: the curvature is undefined there; "
                "restore finite values (e.g. from a checkpoint) before building the operator"
            )


def check_length(n: int, P: int) -> None:
    if n != P:
        raise ValueError(
            f"expected a vector of length P={P} (the number of entries in op.params), got "
            f"{n}; build one with op.flatten(list_of_parameter_shaped_tensors)"
        )


def _check_shape(shape: tuple[int, ...], P: int) -> None:
    if len(shape) not in (1, 2):
        raise ValueError(f"expected a vector (P,) or a matrix (P, k), got shape {shape}")
    check_length(shape[0], P)


def check_numpy_input(x: Any, P: int) -> None:
    """A real floating-point numpy (P,) or (P, k) array (finiteness: ``check_torch_input``)."""
    x = np.asarray(x)
    if np.iscomplexobj(x) or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"expected a real floating-point array, got dtype {x.dtype}: convert it with "
            "x.astype(op.dtype) (complex vectors are not supported)"
        )
    _check_shape(tuple(x.shape), P)


def check_torch_input(M: Any, P: int) -> None:
    """A real floating-point torch (P,) or (P, k) tensor of finite values."""
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"torch_matmat expects a torch.Tensor, got {type(M).__name__}")
    if M.is_complex() or not M.is_floating_point():
        raise TypeError(
            f"expected a real floating-point tensor, got {M.dtype}: convert it with "
            "M.to(op.torch_dtype) (complex vectors are not supported)"
        )
    _check_shape(tuple(M.shape), P)
    if not bool(torch.isfinite(M).all()):
        raise FloatingPointError(
            "the vector(s) to multiply hold NaN or inf values; pass finite directions"
        )


def rng_states(device: torch.device) -> list[torch.Tensor]:
    """The states of torch's default generators that a forward pass on ``device`` can use."""
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def same_states(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def check_same_under_rng(
    first: torch.Tensor, second: torch.Tensor, index: int, drew: bool = False
) -> None:
    """The loss of one batch under two RNG states must agree (to rounding), and the forward
    pass must not draw from torch's generators (``drew``)."""
    rtol = 1e-4 if first.dtype == torch.float32 else 1e-9
    scale = float(first.detach().abs().max().clamp(min=1e-30))
    differ = float((first - second).abs().max()) > rtol * scale
    if differ or drew:
        how = "differs under two random states" if differ else "draws random numbers"
        raise ValueError(
            f"the model's forward pass is random: the loss of batch {index} {how} (dropout "
            "or attention dropout, F.dropout / scaled_dot_product_attention(dropout_p=) in forward, nn.RReLU in "
            "train mode, stochastic depth, a Hugging Face model left in train mode), so every "
            "product would see another function. Call model.eval() (or set those "
            "probabilities to 0) before building the operator"
        )


def assert_deterministic(first: torch.Tensor, second: torch.Tensor, what: str) -> None:
    """Two evaluations of the same quantity must agree (to rounding)."""
    rtol = 1e-4 if first.dtype == torch.float32 else 1e-9
    scale = first.abs().max().clamp(min=1e-30)
    if float((first - second).abs().max()) > rtol * float(scale):
        raise RuntimeError(
            f"the model is not deterministic: two evaluations of the {what} differ. Put the "
            "model in eval mode (dropout), and remove random or data-dependent layers"
        )
