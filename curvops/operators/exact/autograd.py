"""Batched vector-Jacobian products through a kept graph (``is_grads_batched``), with a loop
fallback for ops without a batching rule."""

from __future__ import annotations

import warnings

import torch


def batched_grad(
    outputs: list[torch.Tensor], inputs: list[torch.Tensor], grads: list[torch.Tensor], step: int
) -> list[torch.Tensor]:
    """For each of the k columns of ``grads`` (each (k, *outputs[i].shape)), the vector-Jacobian
    product of ``outputs`` w.r.t. ``inputs``: (k, *inputs[j].shape); zeros where unused.

    ``step`` columns share one batched backward (``is_grads_batched``); the graph is kept.
    """
    k = grads[0].shape[0]
    if step >= k > 1:
        return _batched(outputs, inputs, grads, k)
    out = [torch.empty(k, *x.shape, dtype=x.dtype, device=x.device) for x in inputs]
    for start in range(0, k, step):
        cols = [g[start : start + step] for g in grads]
        if step > 1:
            part = _batched(outputs, inputs, cols, cols[0].shape[0])
        else:
            part = _fill(_grad(outputs, inputs, [c[0] for c in cols], False), inputs, None)
        for o, r in zip(out, part):
            o[start : start + step].copy_(r)
    return out


def _batched(outputs, inputs, grads, k: int) -> list[torch.Tensor]:
    try:
        return _fill(_grad(outputs, inputs, grads, True), inputs, k)
    except RuntimeError as err:  # an op without a batching rule: loop instead
        warnings.warn(
            f"batched backward unavailable ({err}); looping over columns (same numbers, "
            "slower): build the operator with column_mode='per_column' to skip the attempt",
            stacklevel=3,
        )
        return batched_grad(outputs, inputs, grads, 1)


def _grad(outputs, inputs, grads, batched: bool):
    return torch.autograd.grad(
        outputs, inputs, grads, retain_graph=True, allow_unused=True, is_grads_batched=batched
    )


def _fill(res, inputs, k: int | None) -> list[torch.Tensor]:
    """Zeros for the inputs that ``outputs`` do not depend on (None gradients)."""
    return [
        r
        if r is not None
        else torch.zeros(x.shape if k is None else (k, *x.shape), dtype=x.dtype, device=x.device)
        for r, x in zip(res, inputs)
    ]
