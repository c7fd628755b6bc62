"""ExactOperator: the shared shell of the Hessian and the GGN (graph cache, column plan)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from curvops.core.data import Batch
from curvops.core.memory import auto_budget_mib
from curvops.core.options import ColumnMode, check_choice
from curvops.operators.base import CurvatureOperator
from curvops.operators.exact.columns import ColumnPlan, device_of
from curvops.operators.exact.graph_cache import GraphCache
from curvops.operators.exact.micro_batches import check_micro_batch_size, split_batch

EXACT_SETTINGS = ("graph_cache_mib", "column_mode", "micro_batch_size")  # exact operators' own


def without_exact_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the settings only the exact operators take (``EXACT_SETTINGS``):
    what a caller that builds exact and Kronecker operators from one set passes to KFAC."""
    return {key: value for key, value in kwargs.items() if key not in EXACT_SETTINGS}


def active_blocks(M: torch.Tensor, slices: list[slice]) -> list[bool]:
    """Per block: does M (P,) or (P, k) have a nonzero (or NaN) entry in its slice? One
    host sync. A block whose directions are all zero has the product A_bb 0 = 0."""
    if len(slices) == 1:
        return [True]
    return torch.stack([M[s].ne(0).any() for s in slices]).tolist()


def filled(parts: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """The per-parameter results of one batch, every entry set."""
    missing = [i for i, p in enumerate(parts) if p is None]
    assert not missing, f"internal: no product for parameters {missing}"
    return [p for p in parts if p is not None]


class ExactOperator(CurvatureOperator):
    """A curvature whose products run through per-batch autograd graphs, kept between
    products by a ``GraphCache`` and split over the columns of a matmat by a ``ColumnPlan``.

    ``graph_cache_mib``: MiB of per-batch graphs kept between products (0 turns it off);
    None (the default): ``AUTO_FRACTION`` (1/4) of the device's available memory when the
    operator is built (``curvops.core.memory``). The same budget bounds the batches of a
    DataLoader kept on the device after the first product (``curvops.core.data.DataLoop``):
    later products replay them instead of reading the loader, so their graphs are reused.
    ``micro_batch_size``: None (whole batches) or m >= 1: every batch of B > m rows runs as
    ⌈B/m⌉ pieces of at most m rows (views along the leading axis of its tensors, each
    weighed by d_p / D from its own targets; ``micro_batches``), so a product, a gradient
    and the graph cache's entries hold one piece's graph at a time; the operator is the
    same for a model that treats its rows independently (eval mode, no batch statistics).
    ``column_mode``: "rule" (fixed by model type and size, see ``ColumnPlan``), "per_column",
    "batched" or "auto" (timed once). Other arguments: see ``CurvatureOperator``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        *,
        chunk_size: int | None = None,
        graph_cache_mib: float | None = None,
        column_mode: ColumnMode = "rule",
        micro_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_choice("column_mode", column_mode, ColumnMode)
        self.micro_batch_size = check_micro_batch_size(micro_batch_size)
        if graph_cache_mib is None:
            graph_cache_mib = auto_budget_mib(device_of(model))
        self._cache = GraphCache(graph_cache_mib)
        self._columns: list = []  # the contiguous copy of the current product's directions
        self._active: list[bool] = []  # per block: nonzero directions in this product
        num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        budget = auto_budget_mib(device_of(model)) * 2**20  # a batched matmat's working memory
        self._plan = ColumnPlan.for_model(column_mode, model, chunk_size, num_params, budget)
        super().__init__(model, loss_fn, data, chunk_size=chunk_size, **kwargs)

    def _live_blocks(self) -> list[tuple[int, ...]]:
        """The blocks with nonzero directions in this product (the others' products are 0)."""
        active = self._active or [True] * len(self.layout.blocks)
        return [block for block, on in zip(self.layout.blocks, active) if on]

    def _zero_parts(self, Vs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Per parameter: zeros where its block has no nonzero direction, else None (to fill)."""
        live = {i for block in self._live_blocks() for i in block}
        return [None if i in live else torch.zeros_like(v) for i, v in enumerate(Vs)]

    def _batches(self) -> Iterator[Batch]:
        """The batches with loss terms, each cut into micro-batches (``micro_batch_size``);
        a piece without loss terms (every target ignored) is skipped."""
        size, denominator = self.micro_batch_size, self._loop.denominator
        for batch in super()._batches():
            yield from (p for p in split_batch(batch, size, denominator) if p.denominator)

    def _kept_data_bytes(self) -> float:
        return self._cache.budget if self._cache.enabled else 0.0

    def _forget_cached_passes(self) -> None:
        self._cache.clear()

    def _plans_columns(self) -> bool:
        """Whether a matmat's columns go through the column plan (else one batched pass)."""
        return True

    def _chunk_matmat(self, M: torch.Tensor) -> torch.Tensor:
        if M.ndim == 2 and self._plans_columns():
            return self._plan.matmat(self._product, M, self._cache)
        return self._product(M)

    def _product(self, M: torch.Tensor) -> torch.Tensor:
        """One data pass with the cache checked against the model's token first; blocks
        whose directions are all zero are skipped (their product is 0), all of them: no pass."""
        self._active = active_blocks(M, self.layout.block_slices)
        if not any(self._active):
            self._active = []
            return torch.zeros_like(M)
        self._cache.begin_pass(self._token)
        try:
            return self._data_pass(M)
        finally:
            self._cache.end_pass()
            self._columns.clear()
            self._active = []
