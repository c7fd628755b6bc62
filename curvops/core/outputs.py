"""A model's forward pass on one batch, as curvops runs it on any model.

A mapping ``X`` (``{"input_ids": ..., "attention_mask": ...}``) is passed as keyword
arguments, ``model(**X)``, when the model's ``forward`` takes those keywords (a Hugging Face
model does); a model whose ``forward(X)`` takes the mapping itself gets it as one argument.
An output with a ``.logits`` attribute (a Hugging Face ``ModelOutput``) or a mapping with a
"logits" key gives its logits; any other output is passed on as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


def takes_keywords(model: nn.Module, X: Any) -> bool:
    """Whether ``model(**X)`` is the call: X is a mapping whose keys bind to forward's
    parameters (else ``model(X)``: forward takes the mapping as one argument)."""
    if not isinstance(X, Mapping):
        return False
    try:
        inspect.signature(model.forward).bind(**{str(k): v for k, v in X.items()})
    except (TypeError, ValueError):
        return False
    return True


def call_model(model: nn.Module, X: Any, params: dict[str, torch.Tensor] | None = None) -> Any:
    """``model(**X)`` or ``model(X)`` (see ``takes_keywords``); with ``params``, the same
    call through ``torch.func.functional_call`` with those parameter values."""
    keywords = takes_keywords(model, X)
    if params is None:
        return model(**X) if keywords else model(X)
    args, kwargs = ((), dict(X)) if keywords else ((X,), {})
    return functional_call(model, params, args, kwargs)


def logits_of(output: Any) -> Any:
    """``output.logits`` (a ``ModelOutput``), ``output["logits"]`` (a mapping), else ``output``."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    return output if logits is None else logits
