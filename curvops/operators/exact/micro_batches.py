"""Micro-batches: a data batch cut along its leading axis, so a product holds one piece's graph.

With B rows and at most m per piece, batch b becomes pieces p = 1..⌈B/m⌉ viewing rows
[(p-1)m, pm) of every tensor whose leading size is B (inputs and targets; constants such
as None, numbers or 0-d tensors pass whole). Each piece weighs d_p / D, d_p counted from
its own targets (``curvops.core.denominators``); as Σ_p d_p = d_b and the loss of a model
that treats its rows independently is additive over them, Σ_p d_p L_p = d_b L_b: the
operator is unchanged. Pieces are views: no copy, and the graph cache checks the whole
batch's tensors (``GraphCache``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from curvops.core.data import Batch
from curvops.core.denominators import Denominator

_CONSTANTS = (type(None), bool, int, float)  # passed whole to every piece


def check_micro_batch_size(size: object) -> int | None:
    """None or an integer >= 1 (not a bool), else a ValueError naming ``micro_batch_size``."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(
            f"micro_batch_size must be None (whole batches) or an integer >= 1 (the most "
            f"rows of a batch per forward/backward pass); got {size!r}"
        )
    return int(size)


def split_batch(batch: Batch, size: int | None, denominator: Denominator) -> Iterator[Batch]:
    """``batch`` in pieces of at most ``size`` rows (the batch itself if it has no more)."""
    if size is None or batch.size <= size:
        yield batch
        return
    for piece, start in enumerate(range(0, batch.size, size)):
        rows = slice(start, min(start + size, batch.size))
        X = _cut(batch.X, rows, batch.size, "X", size)
        y = _cut(batch.y, rows, batch.size, "y", size)
        n = rows.stop - rows.start
        yield Batch(X, y, n, batch.index, denominator(y, n), piece=piece, whole=batch)


def _cut(obj: Any, rows: slice, B: int, where: str, size: int) -> Any:
    """Rows ``rows`` of every tensor of ``obj`` with leading size B, at any depth."""
    if isinstance(obj, torch.Tensor):
        if obj.ndim == 0:
            return obj
        if obj.shape[0] == B:
            return obj[rows]
        raise ValueError(_refusal(size, where, f"has leading size {obj.shape[0]}, not B = {B}"))
    if isinstance(obj, Mapping):
        return type(obj)({k: _cut(v, rows, B, f"{where}[{k!r}]", size) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, (list, tuple)):
        if not _has_tensor(obj):
            raise ValueError(_refusal(size, where, f"is a {type(obj).__name__} without tensors"))
        return type(obj)(_cut(v, rows, B, f"{where}[{i}]", size) for i, v in enumerate(obj))
    if isinstance(obj, _CONSTANTS):
        return obj
    raise ValueError(_refusal(size, where, f"is a {type(obj).__name__}"))


def _has_tensor(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, Mapping):
        return any(_has_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v) for v in obj)
    return False


def _refusal(size: int, where: str, what: str) -> str:
    return (
        f"micro_batch_size={size} cannot split this batch: {where} {what}, so curvops cannot "
        "tell which of its entries belong to which rows. Give every per-example tensor a "
        "leading batch axis of size B (constants may be None, numbers or 0-d tensors), or "
        "pass micro_batch_size=None"
    )
