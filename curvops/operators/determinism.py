"""Refusals of randomness in an operator's forward pass: a first-batch probe under two RNG
states at construction, and (``check_deterministic=True``) two full data passes."""

from __future__ import annotations

from typing import Any

import torch

from curvops.core import checks


def refuse_random_forward(op: Any) -> None:
    """Refuse a random forward pass (dropout of any kind, RReLU, stochastic depth, ...):
    the loss of the first batch under two RNG states, and whether torch's generators
    moved during it. Two forward passes of one batch, once; the user's RNG is restored."""
    batch = next(op._batches(), None)
    if batch is None:  # a distributed rank without data
        return
    cuda = op.device.type == "cuda"
    devices = [op.device.index or 0] if cuda else []
    losses, moved = [], False
    with torch.no_grad(), op._forward_context(), torch.random.fork_rng(devices=devices):
        for seed in (1234, 4321):
            torch.manual_seed(seed)
            before = checks.rng_states(op.device)
            losses.append(op._batch_loss(batch))
            moved = moved or not checks.same_states(before, checks.rng_states(op.device))
    checks.check_same_under_rng(losses[0], losses[1], batch.index, moved)


def check_deterministic(op: Any) -> None:
    """Every batch's loss twice, and one product from two full data passes (no cache)."""
    with torch.no_grad(), op._forward_context():
        for batch in op._batches():
            checks.assert_deterministic(
                op._batch_loss(batch), op._batch_loss(batch), f"loss on batch {batch.index}"
            )
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(op.shape[0], generator=gen, dtype=op.torch_dtype).to(op.device)
    first = op.torch_matmat(v)
    op._forget_cached_passes()
    checks.assert_deterministic(first, op.torch_matmat(v), "matrix-vector product")
