"""HessianOperator: exact Hessian-vector products H = ∇²_θ L, full or block-diagonal."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from curvops.core.data import Batch
from curvops.core.options import HvpMethod, check_choice
from curvops.operators.exact.autograd import batched_grad
from curvops.operators.exact.base import ExactOperator, filled
from curvops.operators.exact.columns import contiguous_columns
from curvops.operators.exact.derivatives import hessian_message, missing_op


class HessianOperator(ExactOperator):
    """The Hessian of the whole-data loss, H = ∇²_θ L (P, P); any differentiable loss.

    ``hvp``: "double_backward" (the default: one forward + backward with graph per batch,
    then a second backward per column; measured cheapest on every reference problem) or
    "forward_over_reverse" (``torch.func.jvp`` of ``grad``, vmapped over the columns).
    ``chunk_size``: the most columns of a matmat processed at once, all of them in one
    batched pass (memory: see ``CurvatureOperator``); None: as ``column_mode`` says
    ("rule": fixed by model type and size; "per_column", "batched", or "auto": timed once;
    see ``curvops.operators.exact.columns.ColumnPlan``).
    ``on_stale``: "recompute" (default: products follow the parameters' current values) or
    "raise" (``StaleOperatorError`` once they changed; ``op.refresh()`` accepts them).
    ``graph_cache_mib``: double backward keeps each batch's gradient graph between products,
    up to this many MiB (None: 1/4 of the device's available memory, see ``ExactOperator``),
    while the parameters, buffers, module modes and data tensors stay the same (checked on
    every product; 0 turns it off). A product then costs one second backward per batch
    instead of a forward, a backward and a second backward; a matmat with a complete cache
    runs as one product per column. A DataLoader's batches are kept within the same budget,
    so it gets the same reuse as a list from the second product on.
    ``micro_batch_size``: m rows per forward/backward at most; a larger batch runs as pieces,
    each weighed by its own share d_p / D, so the graph held during a product is a piece's
    (the same matrix; see ``ExactOperator``).
    With ``blocks`` each block multiplies only its own slice: H_bb v_b, no cross terms; a
    block whose directions are all zero costs nothing (its second backward is skipped).
    Other keyword arguments: see ``CurvatureOperator``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        *,
        hvp: HvpMethod = "double_backward",
        **kwargs: Any,
    ) -> None:
        self.hvp: HvpMethod = check_choice("hvp", hvp, HvpMethod)
        super().__init__(model, loss_fn, data, **kwargs)

    def _plans_columns(self) -> bool:
        return self.hvp == "double_backward"

    def _batch_matmat(self, batch: Batch, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
        try:
            return self._hessian_matmat(batch, Vs)
        except (RuntimeError, NotImplementedError) as err:  # an op without a second derivative
            op = missing_op(err)
            if op is None:
                raise
            raise ValueError(hessian_message(op)) from err

    def _hessian_matmat(self, batch: Batch, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
        Vs = contiguous_columns(self._columns, Vs)
        out = self._zero_parts(Vs)
        if not self._live_blocks():
            return filled(out)
        if self.hvp == "double_backward":
            self._double_backward(batch, Vs, out)
        else:
            for block in self._live_blocks():
                for i, r in zip(block, self._forward_over_reverse(batch, block, Vs)):
                    out[i] = r
        return filled(out)

    # ---------------------------------------------------------------- double backward
    def _double_backward(self, batch: Batch, Vs, out) -> None:
        params = self.layout.params
        with torch.enable_grad():
            grads = self._cache.get(batch)
            if grads is None:
                grads = self._cache.build(batch, lambda: self._loss_grads(batch), params)
            for block in self._live_blocks():
                ps = [params[i] for i in block]
                pairs = [
                    (grads[i], Vs[i])
                    for i in block
                    if grads[i] is not None and grads[i].requires_grad
                ]
                for i, r in zip(block, self._grad_of_grads(pairs, ps, Vs[block[0]].shape[0])):
                    out[i] = r

    def _loss_grads(self, batch: Batch) -> tuple:
        loss = self._batch_loss(batch)
        return torch.autograd.grad(loss, self.layout.params, create_graph=True, allow_unused=True)

    def _grad_of_grads(self, pairs, ps, k: int) -> list[torch.Tensor]:
        """∇_θ (Σ_i g_i · v_i) for every column: the block's Hessian times its V."""
        if not pairs:
            return [torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device) for p in ps]
        gs, vs = [g for g, _ in pairs], [v for _, v in pairs]
        return batched_grad(gs, ps, vs, self._plan.step(k))

    # ---------------------------------------------------------------- forward over reverse
    def _forward_over_reverse(self, batch: Batch, block, Vs) -> list[torch.Tensor]:
        names = [self.layout.names[i] for i in block]
        primals = tuple(self.layout.params[i].detach() for i in block)

        def loss_of(*ps):
            output = self._functional_forward(dict(zip(names, ps)), batch.X)
            self._check_targets(output, batch.y)
            return self.loss_fn(output, batch.y)

        gradient = grad(loss_of, argnums=tuple(range(len(primals))))

        def hvp(*vs):
            return jvp(gradient, primals, vs)[1]

        k = Vs[block[0]].shape[0]
        step = self.chunk_size or k
        parts = [vmap(hvp)(*[Vs[i][s : s + step] for i in block]) for s in range(0, k, step)]
        return [torch.cat(cols, dim=0) for cols in zip(*parts)]
