"""Reuse of per-batch autograd graphs between products, while nothing they depend on changes.

An entry is one batch's graph (e.g. its loss gradient built with ``create_graph=True``).
Entries are valid while (1) the model's ``ModelWatch`` token is the one they were built
under (parameters, buffers, modules, attributes, hooks and modes: see
``curvops.core.watch``; compared once per product) and (2) the data yields the very same
tensor objects, unmodified (version counters), at each index (a micro-batch: its whole
batch's tensors, its key the (index, piece) pair). A DataLoader's batches are
such objects once the data loop keeps them (``curvops.core.data.DataLoop``, within the same
budget): from the second product on. Data that still yield new tensors every pass (a
loader too large to keep) turn the cache off at the first such miss.
Entries are kept only up to a memory budget; batches beyond it are recomputed each time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from curvops.core.data import Batch
from curvops.core.watch import Token


class GraphCache:
    """Per-batch graphs of one operator, up to ``budget_mib`` MiB (0 turns it off)."""

    def __init__(self, budget_mib: float) -> None:
        if not budget_mib >= 0:
            raise ValueError(
                f"graph_cache_mib must be >= 0 (0 turns the cache off), got {budget_mib}"
            )
        self.budget = budget_mib * 2**20
        self.enabled = budget_mib > 0
        self.used = 0
        self.largest = 0  # bytes of the largest batch graph measured (the column plan's g)
        self.entries: dict[tuple[int, int], tuple[list, Any]] = {}
        self.token: Token | None = None
        self.complete = False  # the last product found or stored every batch's graph
        self._pass_complete = False

    def begin_pass(self, token: Token) -> None:
        """Start a product: drop every entry if the model's token changed since they were built."""
        if self.enabled and token != self.token:
            self.clear()
            self.token = token
        self._pass_complete = self.enabled

    def end_pass(self) -> None:
        self.complete = self._pass_complete and self.enabled

    def get(self, batch: Batch) -> Any | None:
        """The stored graph of ``batch``, or None (then build it and ``put`` it)."""
        if not self.enabled:
            return None
        entry = self.entries.get(batch.key)
        if entry is None:
            return None
        if not _same_tensors(entry[0], _tensors(batch.whole or batch)):
            self.clear()  # new tensor objects each pass: a DataLoader; caching cannot help
            self.enabled = False
            return None
        return entry[1]

    def build(self, batch: Batch, fn: Callable[[], Any], exclude: Sequence[torch.Tensor]) -> Any:
        """``fn()``, stored for ``batch`` if its graph fits the remaining budget."""
        if not self.enabled:
            return fn()
        value, nbytes = _with_graph_size(fn, [*exclude, *_tensors(batch)])
        self.largest = max(self.largest, nbytes)
        if self.used + nbytes <= self.budget:
            self.entries[batch.key] = (_tensors(batch.whole or batch), value)
            self.used += nbytes
        else:
            self._pass_complete = False
        return value

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0
        self.complete = self._pass_complete = False


def _tensors(batch: Batch) -> list:
    """The batch's tensors with their version counters (identity + in-place changes), at
    any depth of mappings, lists and tuples."""
    return [(t, t._version) for t in _leaves(batch.X) + _leaves(batch.y)]


def _leaves(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _leaves(v)]
    return []


def _same_tensors(old: list, new: list) -> bool:
    return len(old) == len(new) and all(a is b and va == vb for (a, va), (b, vb) in zip(old, new))


def _with_graph_size(fn: Callable[[], Any], exclude: list) -> tuple[Any, int]:
    """``fn()`` and the bytes of the distinct storages its graph saves (minus ``exclude``)."""
    skip = {_ptr(t[0] if isinstance(t, tuple) else t) for t in exclude}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = _ptr(t)
        if ptr not in skip:
            sizes[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = fn()
    outputs = value if isinstance(value, (list, tuple)) else [value]
    extra = sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor))
    return value, sum(sizes.values()) + extra


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()
