"""HessianOperator: exact Hessian-vector products H = ∇²_θ L, full or block-diagonal."""

from __future__ import annotations

import warnings

import torch
from torch.func import functional_call, grad, jvp, vmap

from curvops.operators.base import CurvatureOperator
from curvops.operators.data import Batch

HVP_METHODS = ("double_backward", "forward_over_reverse")


class HessianOperator(CurvatureOperator):
    """The Hessian of the whole-data loss, H = ∇²_θ L (P, P); any differentiable loss.

    ``hvp``: "double_backward" (one forward + backward with graph per batch, then one
    batched second backward for all k columns; the default, cheapest on MLPs and
    transformers) or "forward_over_reverse" (``torch.func.jvp`` of ``grad``, vmapped over
    the columns). ``chunk_size`` caps the columns multiplied at once (memory).
    With ``blocks`` each block multiplies only its own slice: H_bb v_b, no cross terms.
    Other keyword arguments: see ``CurvatureOperator``.
    """

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        hvp: str = "double_backward",
        chunk_size: int | None = None,
        **kwargs,
    ) -> None:
        if hvp not in HVP_METHODS:
            raise ValueError(f"hvp must be one of {HVP_METHODS}, got {hvp!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        self.hvp, self.chunk_size = hvp, chunk_size
        self._vmap_failed = False
        super().__init__(model, loss_fn, data, **kwargs)

    def _batch_matmat(self, batch: Batch, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(Vs)
        if self.hvp == "double_backward":
            self._double_backward(batch, Vs, out)
        else:
            for block in self.layout.blocks:
                for i, r in zip(block, self._forward_over_reverse(batch, block, Vs)):
                    out[i] = r
        return out

    # ---------------------------------------------------------------- double backward
    def _double_backward(self, batch: Batch, Vs, out) -> None:
        params = self.layout.params
        with torch.enable_grad():
            loss = self._batch_loss(batch)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            for block in self.layout.blocks:
                ps = [params[i] for i in block]
                pairs = [
                    (grads[i], Vs[i])
                    for i in block
                    if grads[i] is not None and grads[i].requires_grad
                ]
                for i, r in zip(block, self._grad_of_grads(pairs, ps, Vs[block[0]].shape[0])):
                    out[i] = r

    def _grad_of_grads(self, pairs, ps, k: int) -> list[torch.Tensor]:
        """∇_θ (Σ_i g_i · v_i) for every column: the block's Hessian times its V."""
        if not pairs:
            return [torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device) for p in ps]
        gs = [g for g, _ in pairs]
        step = self.chunk_size or k
        parts = []
        for start in range(0, k, step):
            vs = [v[start : start + step] for _, v in pairs]
            parts.append(self._batched_backward(gs, ps, vs))
        return [torch.cat(cols, dim=0) for cols in zip(*parts)]

    def _batched_backward(self, gs, ps, vs) -> list[torch.Tensor]:
        k = vs[0].shape[0]
        if k > 1 and not self._vmap_failed:
            try:
                res = torch.autograd.grad(
                    gs, ps, vs, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
                return _fill_zeros(res, ps, k)
            except RuntimeError as err:  # an op without a batching rule: loop instead
                self._vmap_failed = True
                warnings.warn(
                    f"batched HVP unavailable ({err}); looping over columns", stacklevel=4
                )
        cols = [
            _fill_zeros(
                torch.autograd.grad(
                    gs, ps, [v[j] for v in vs], retain_graph=True, allow_unused=True
                ),
                ps,
                None,
            )
            for j in range(k)
        ]
        return [torch.stack(c) for c in zip(*cols)]

    # ---------------------------------------------------------------- forward over reverse
    def _forward_over_reverse(self, batch: Batch, block, Vs) -> list[torch.Tensor]:
        names = [self.layout.names[i] for i in block]
        primals = tuple(self.layout.params[i].detach() for i in block)

        def loss_of(*ps):
            output = functional_call(self.model, dict(zip(names, ps)), (batch.X,))
            return self.loss_fn(output, batch.y)

        gradient = grad(loss_of, argnums=tuple(range(len(primals))))

        def hvp(*vs):
            return jvp(gradient, primals, vs)[1]

        k = Vs[block[0]].shape[0]
        step = self.chunk_size or k
        parts = [vmap(hvp)(*[Vs[i][s : s + step] for i in block]) for s in range(0, k, step)]
        return [torch.cat(cols, dim=0) for cols in zip(*parts)]


def _fill_zeros(res, ps, k: int | None) -> list[torch.Tensor]:
    """Replace None (a parameter the gradient does not depend on) with zeros."""
    shape = (lambda p: (k, *p.shape)) if k is not None else (lambda p: p.shape)
    return [
        r if r is not None else torch.zeros(shape(p), dtype=p.dtype, device=p.device)
        for r, p in zip(res, ps)
    ]
