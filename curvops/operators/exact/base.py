"""ExactOperator: the shared shell of the Hessian and the GGN (graph cache, column plan)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from curvops.core.options import ColumnMode, check_choice
from curvops.operators.base import CurvatureOperator
from curvops.operators.exact.columns import ColumnPlan
from curvops.operators.exact.graph_cache import GraphCache


def filled(parts: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """The per-parameter results of one batch, every entry set."""
    missing = [i for i, p in enumerate(parts) if p is None]
    assert not missing, f"internal: no product for parameters {missing}"
    return [p for p in parts if p is not None]


class ExactOperator(CurvatureOperator):
    """A curvature whose products run through per-batch autograd graphs, kept between
    products by a ``GraphCache`` and split over the columns of a matmat by a ``ColumnPlan``.

    ``graph_cache_mib``: MiB of per-batch graphs kept between products (0 turns it off).
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
        graph_cache_mib: float = 1024.0,
        column_mode: ColumnMode = "rule",
        **kwargs: Any,
    ) -> None:
        check_choice("column_mode", column_mode, ColumnMode)
        self._cache = GraphCache(graph_cache_mib)
        self._columns: list = []  # the contiguous copy of the current product's directions
        num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self._plan = ColumnPlan.for_model(column_mode, model, chunk_size, num_params)
        super().__init__(model, loss_fn, data, chunk_size=chunk_size, **kwargs)

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
        """One data pass with the cache checked against the model's token first."""
        self._cache.begin_pass(self._token)
        try:
            return self._data_pass(M)
        finally:
            self._cache.end_pass()
            self._columns.clear()
