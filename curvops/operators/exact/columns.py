"""How the k columns of a matmat are split: one product per column, or batched passes.

The default ("rule") is fixed, never timed: measured once on one CPU thread
(benchmarks/RESULTS.md, "Column plan"), batching the columns (``is_grads_batched``) wins on
small dense models (digits MLP, P = 3,466: 0.64-0.78x a matvec per column), loses on the
784-512-256-10 MLP (P = 535,818) and is 2-3x slower and memory-hungry on conv nets,
normalisation layers and attention. So: batched on CUDA, and on the CPU for models of at most
``BATCHED_MAX_PARAMS`` parameters without conv / norm / attention modules; otherwise one
product per column once every batch's graph is cached (no (k, P) accumulators, nothing
recomputed). "auto" times the two once, on the first matmat with >= 3 cached columns.
A batched matmat without ``chunk_size`` runs c columns per data pass, c = max(1,
⌊budget / (4 P s + g)⌋) (s the itemsize, g the largest cached batch graph, 0 before one is
cached; budget: 1/4 of the available memory, ``curvops.core.memory``), so its working
memory beyond M and the result stays within the budget whatever k is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from curvops.core.options import ColumnMode
from curvops.operators.chunks import by_chunks
from curvops.operators.exact.graph_cache import GraphCache

Product = Callable[[torch.Tensor], torch.Tensor]
BATCHED_MARGIN = 0.8  # "auto" batches only when clearly faster: it costs k times the memory
BATCHED_MAX_PARAMS = 20_000  # the CPU rule: batched only below this many parameters
_UNBATCHED_MODULES = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.MultiheadAttention,
)


def rule_batches(device: torch.device, model: nn.Module, num_params: int) -> bool:
    """The fixed default: batch the columns of a matmat (True) or one product per column."""
    if device.type == "cuda":
        return True
    heavy = any(isinstance(m, _UNBATCHED_MODULES) for m in model.modules())
    return not heavy and num_params <= BATCHED_MAX_PARAMS


class ColumnPlan:
    """Splits the k columns of a matmat: one product per column, or batched passes.

    ``chunk_size`` given: one product, ``chunk_size`` columns per batched pass. Otherwise by
    ``mode``: "rule" (``rule_batches``), "per_column", "batched", or "auto" (timed once:
    column 2 alone against columns 3..k batched, on the first matmat with >= 3 columns
    whose graphs are all cached; every column is useful work). Two operators built alike
    always run the same code unless "auto" is asked for.
    ``step(k)`` tells the product running now how many columns to batch.
    """

    def __init__(
        self,
        batched: bool | None,
        chunk_size: int | None,
        device: torch.device,
        column_bytes: float = 0.0,
        budget: float = float("inf"),
    ) -> None:
        self.chunk_size, self.device = chunk_size, device
        self.batched = batched  # None: "auto", not decided yet
        self.column_bytes, self.budget = column_bytes, budget  # 4 P s; the matmat budget
        self._step: int | None = None

    def columns_per_pass(self, k: int, graph_bytes: float) -> int:
        """c = max(1, ⌊budget / (4 P s + g)⌋) columns of a batched matmat per data pass."""
        per_column = self.column_bytes + graph_bytes
        return k if per_column <= 0 else max(1, min(k, int(self.budget // per_column)))

    @classmethod
    def for_model(
        cls,
        mode: ColumnMode,
        model: nn.Module,
        chunk_size: int | None,
        num_params: int,
        budget: float = float("inf"),
    ) -> ColumnPlan:
        device = device_of(model)
        batched = {
            "rule": rule_batches(device, model, num_params),
            "per_column": False,
            "batched": True,
            "auto": None,
        }[mode]
        itemsize = next((p.element_size() for p in model.parameters()), 4)
        return cls(batched, chunk_size, device, 4.0 * num_params * itemsize, budget)

    def step(self, k: int) -> int:
        if self.chunk_size is not None:
            return min(self.chunk_size, k)
        if self._step is not None:
            return min(self._step, k)
        return k if self.batched else 1

    def matmat(self, product: Product, M: torch.Tensor, cache: GraphCache) -> torch.Tensor:
        """``product(M)`` for M (P,) or (P, k), split as planned."""
        k = 1 if M.ndim == 1 else M.shape[1]
        if k > 1 and self.chunk_size is None and self.batched:
            return by_chunks(product, M, self.columns_per_pass(k, cache.largest))
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
