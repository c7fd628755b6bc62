"""The data loop: batches on the operator's device, their sizes and weights.

The operator is the curvature of the loss over the WHOLE data set. Under reduction
"mean", L = (1/N) Σ_n ℓ_n, so a batch of B points contributes its mean loss with weight
B / N (never a mean of batch means); under "sum" every batch has weight 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Batch:
    """One batch on the operator's device: inputs ``X``, targets ``y``, ``size`` B, ``index``."""

    X: Any
    y: Any
    size: int
    index: int


class DataLoop:
    """Re-iterates ``data`` (pairs ``(X, y)``), moving batches to ``device``.

    ``X`` may be a tensor (B = X.shape[0]) or a mapping (B = the leading size its tensors
    share, or ``batch_size_fn(X)``).
    Floating-point tensors are cast to ``dtype``, so a float32 data set feeds a float64 model.
    Once ``count()`` has run, every pass must yield that many points (a one-shot iterable,
    empty on its second pass, raises instead of silently giving a wrong N).
    """

    def __init__(
        self,
        data: Iterable,
        device: torch.device,
        dtype: torch.dtype,
        batch_size_fn: Callable[[Any], int] | None = None,
        progress: bool = False,
        allow_empty: bool = False,
    ) -> None:
        if isinstance(data, Iterator):  # never call iter() here: it may consume the data
            raise TypeError(
                "data is an iterator (e.g. a generator) that would be exhausted after one pass; "
                "curvops iterates the data once per product: pass a list of (X, y) batches or a "
                "DataLoader"
            )
        self.data = data
        self.device = device
        self.dtype = dtype
        self.batch_size_fn = batch_size_fn
        self.progress = progress
        self.allow_empty = allow_empty  # a distributed rank may hold no data
        self.expected: int | None = None  # data points per pass, once counted

    def __iter__(self) -> Iterator[Batch]:
        batches = self.data
        if self.progress:
            total = len(self.data) if isinstance(self.data, Sized) else None
            from tqdm.auto import tqdm  # imported only when asked for (notebook widgets)

            batches = tqdm(self.data, total=total, desc="curvops batches", leave=False)
        count = points = 0
        for index, item in enumerate(batches):
            X, y = _unpack(item, index)
            X, y = self._move(X), self._move(y)
            batch = Batch(X, y, self.batch_size(X), index)
            yield batch
            count, points = count + 1, points + batch.size
        self._check_pass(count, points)

    def _check_pass(self, count: int, points: int) -> None:
        if self.expected is not None and points != self.expected:
            raise ValueError(
                f"data yielded {points} data points in this pass but {self.expected} in the "
                "first one: curvops iterates the data once per product, so it must yield the "
                "same points every time (not a one-shot iterable, nor a sampler whose "
                "length changes); pass a list of (X, y) batches or a DataLoader"
            )
        if count == 0 and not self.allow_empty:
            raise ValueError(
                "data yielded no batches: pass a non-empty list of (X, y) batches or a DataLoader"
            )

    def batch_size(self, X) -> int:
        if self.batch_size_fn is not None:
            return int(self.batch_size_fn(X))
        if isinstance(X, torch.Tensor):
            if X.ndim == 0:
                raise ValueError("a batch X is a scalar tensor: X needs a leading batch axis")
            return X.shape[0]
        if isinstance(X, Mapping):
            sizes = {v.shape[0] for v in X.values() if isinstance(v, torch.Tensor) and v.ndim}
            if len(sizes) == 1:
                return sizes.pop()
        raise TypeError(
            f"cannot tell the batch size of an X of type {type(X).__name__} (a mapping is "
            "understood when all its tensors share their leading size): pass "
            "batch_size_fn=lambda X: ... to the operator"
        )

    def count(self) -> int:
        """Number of data points (one pass, no forward passes); later passes must match it."""
        self.expected = None
        self.expected = sum(b.size for b in self)
        return self.expected

    def _move(self, obj):
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point():
                return obj.to(device=self.device, dtype=self.dtype, non_blocking=True)
            return obj.to(device=self.device, non_blocking=True)
        if isinstance(obj, Mapping):
            return type(obj)({k: self._move(v) for k, v in obj.items()})  # type: ignore[call-arg]
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._move(v) for v in obj)
        return obj


def _unpack(item, index: int):
    try:
        X, y = item
    except (TypeError, ValueError):
        raise ValueError(
            f"batch {index} is not a pair (X, y): data must yield (inputs, targets) pairs"
        ) from None
    return X, y


def batch_weight(reduction: str, batch_size: int, num_data: int) -> float:
    """Weight of one batch's loss in the whole-data loss: B / N for "mean", 1 for "sum"."""
    return batch_size / num_data if reduction == "mean" else 1.0
