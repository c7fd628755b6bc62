"""The whole-data loss at displaced parameters, with the operators' batch weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from curvops.core.checks import check_module_modes
from curvops.core.data import DataLoop
from curvops.core.denominators import batch_weight, loss_denominator, loss_reduction
from curvops.core.lm import loss_parts
from curvops.core.outputs import call_model, logits_of


class WholeDataLoss:
    """L(θ) = Σ_b w_b loss_fn(model(X_b), y_b): w_b = d_b / D under "mean" (a batch of B
    points weighs B / N for a per-point mean), 1 under "sum"; as the curvature operators.

    ``params`` (the operator's, in flat order) are the ones ``displaced`` moves.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        params: Sequence[torch.Tensor],
        batch_size_fn: Callable[[Any], int] | None = None,
        reduction: str | None = None,
    ) -> None:
        check_module_modes(model)
        self.parts = loss_parts(loss_fn)  # a TokenLoss as its cross-entropy over the tokens
        self.model, self.loss_fn, self.params = model, self.parts.loss_fn, list(params)
        self.reduction = loss_reduction(self.loss_fn, reduction)
        first = self.params[0]
        self.loop = DataLoop(
            data, first.device, first.dtype, batch_size_fn,
            denominator=loss_denominator(self.loss_fn), targets=self.parts.targets,
        )  # fmt: skip
        _, self.total = self.loop.count()

    def __call__(self) -> float:
        """The loss at the parameters' current values (float64 sum, no graph)."""
        total = 0.0
        with torch.no_grad():
            for batch in self.loop:
                w = batch_weight(self.reduction, batch.denominator, self.total)
                output = self.parts.outputs(logits_of(call_model(self.model, batch.X)))
                total += w * float(self.loss_fn(output, batch.y))
        return total

    @contextmanager
    def displaced(self) -> Iterator[Callable[[torch.Tensor], None]]:
        """A function ``move(theta)`` that sets the parameters to the flat ``theta`` (P,);
        on exit every parameter gets its original values back, bit for bit. Writes go
        through ``.data``: version counters do not move, so operators built on the model
        do not turn stale."""
        originals = [p.detach().clone() for p in self.params]
        sizes = [p.numel() for p in self.params]

        def move(theta: torch.Tensor) -> None:
            for p, part in zip(self.params, torch.split(theta, sizes)):
                p.data.copy_(part.view(p.shape))

        try:
            yield move
        finally:
            for p, original in zip(self.params, originals):
                p.data.copy_(original)
