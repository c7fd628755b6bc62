"""Refusals of randomness in an operator's forward pass: a probe of the first batch's first
points under two RNG states at construction, and (``check_deterministic=True``) two full
data passes."""

from __future__ import annotations

from typing import Any

import torch

from curvops.core import checks

PROBE_POINTS = 16  # points of the first batch the probe runs on


def refuse_random_forward(op: Any) -> None:
    """Refuse a random forward pass (dropout of any kind, RReLU, stochastic depth, ...):
    the loss of the first batch's first ``PROBE_POINTS`` points under two RNG states, and
    whether torch's generators moved during it. Two forward passes of those points, once
    (of the whole batch where the cut's loss is not finite: every target of the cut
    ignored); the user's RNG is restored."""
    batch = next(op._batches(), None)
    if batch is None:  # a distributed rank without data
        return
    probe = batch.head(PROBE_POINTS)
    losses, moved = _two_losses(op, probe)
    finite = all(bool(torch.isfinite(loss).all()) for loss in losses)
    if not finite and probe is not batch:
        losses, moved = _two_losses(op, batch)
    checks.check_same_under_rng(losses[0], losses[1], batch.index, moved)


def _two_losses(op: Any, batch: Any) -> tuple[list[torch.Tensor], bool]:
    """The batch's loss under seeds 1234 and 4321, and whether torch's generators moved."""
    cuda = op.device.type == "cuda"
    devices = [op.device.index or 0] if cuda else []
    losses, moved = [], False
    with torch.no_grad(), op._forward_context(), torch.random.fork_rng(devices=devices):
        for seed in (1234, 4321):
            torch.default_generator.manual_seed(seed)  # the generators rng_states reads
            if cuda:  # (torch.manual_seed would seed every device: slower)
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(seed)
            before = checks.rng_states(op.device)
            losses.append(op._batch_loss(batch))
            moved = moved or not checks.same_states(before, checks.rng_states(op.device))
    return losses, moved


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
