"""How the k columns of a matmat are split: one product per column, or batched passes.

Measured on one CPU thread (benchmarks/RESULTS.md): batching the columns (vmap) wins on
small models, where per-call overhead dominates, loses on the 784-512-256-10 MLP, and is
2-3x slower and memory-hungry on conv nets and the LayerNorm transformer. Once every
batch's graph is cached, one full product per column needs no (k, P) accumulators and
recomputes nothing, so ``ColumnPlan`` times the two once and keeps the faster.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from curvops.operators._graph_cache import GraphCache

Product = Callable[[torch.Tensor], torch.Tensor]
BATCHED_MARGIN = 0.8  # batch only when clearly faster: it costs k times the memory


class ColumnPlan:
    """Splits the k columns of a matmat: one product per column, or batched passes.

    ``chunk_size`` given: one product, ``chunk_size`` columns per batched pass. Otherwise
    conv nets take one column at a time (vmap is slower there and memory-hungry), and other
    models time both once, on the first matmat with at least 3 columns whose graphs are all
    cached (column 2 alone, then columns 3..k batched: every column is useful work), and
    batch only if that is clearly faster (``BATCHED_MARGIN``). Before that: one column at a time on CPU, all batched on CUDA.
    ``step(k)`` tells the product running now how many columns to batch.
    """

    def __init__(self, device: torch.device, model: nn.Module, chunk_size: int | None) -> None:
        self.device, self.chunk_size = device, chunk_size
        self.batched: bool | None = False if _has_conv(model) else None
        self._step: int | None = None

    def step(self, k: int) -> int:
        if self.chunk_size is not None:
            return min(self.chunk_size, k)
        if self._step is not None:
            return min(self._step, k)
        undecided_cuda = self.batched is None and self.device.type == "cuda"
        return k if self.batched or undecided_cuda else 1

    def matmat(self, product: Product, M: torch.Tensor, cache: GraphCache) -> torch.Tensor:
        """``product(M)`` for M (P,) or (P, k), split as planned."""
        k = 1 if M.ndim == 1 else M.shape[1]
        if k == 1 or self.chunk_size is not None or not cache.enabled or self.batched:
            return product(M)
        first = product(M[:, 0].contiguous())  # fills the cache
        if not cache.complete:
            return torch.cat([first.unsqueeze(1), product(M[:, 1:])], dim=1)
        if self.batched is None and k >= 3:
            return torch.cat([first.unsqueeze(1), self._trial(product, M)], dim=1)
        rest = [product(M[:, j].contiguous()) for j in range(1, k)]
        return torch.stack([first, *rest], dim=1)

    def _trial(self, product: Product, M: torch.Tensor) -> torch.Tensor:
        start = now(self.device)
        single = product(M[:, 1].contiguous())
        middle = now(self.device)
        self._step = M.shape[1] - 2
        try:
            rest = product(M[:, 2:])
        finally:
            self._step = None
        per_column = (now(self.device) - middle) / (M.shape[1] - 2)
        self.batched = per_column < BATCHED_MARGIN * (middle - start)
        return torch.cat([single.unsqueeze(1), rest], dim=1)


def by_chunks(fn: Product, M: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """``fn(M)`` for M (P,) or (P, k), calling ``fn`` on at most ``chunk_size`` columns at once.

    The chunks' results are written into one preallocated (P, k) tensor, so the extra memory
    is that of one chunk's product.
    """
    if chunk_size is None or M.ndim == 1 or M.shape[1] <= chunk_size:
        return fn(M)
    out = M.new_empty(M.shape)
    for start in range(0, M.shape[1], chunk_size):
        out[:, start : start + chunk_size] = fn(M[:, start : start + chunk_size])
    return out


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def now(device: torch.device) -> float:
    """A clock reading after the device's queued work (for timing only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def contiguous_columns(memo: list, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Vs as contiguous tensors, copied once per product (``memo``: [source, copies])."""
    if not memo or memo[0] is not Vs:
        memo[:] = [Vs, [v.contiguous() for v in Vs]]
    return memo[1]


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


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
        warnings.warn(f"batched backward unavailable ({err}); looping over columns", stacklevel=3)
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
