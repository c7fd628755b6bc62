"""The data loop: batches on the operator's device, their sizes and loss denominators.

The operator is the curvature of the loss over the WHOLE data set: a batch's loss weighs
d_b / D under "mean" (d_b what its mean divides by, D = Σ_b d_b; see
``curvops.core.denominators``), never a mean of batch means; 1 under "sum". Batches with
no points are skipped; those without loss terms (d_b = 0) are the operators' to skip
(KFAC still reads their layer inputs). Every pass is compared
with the first (counting) one: same number of points, same checksum (``checksum``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch

from curvops.core.checksum import PassChecksum
from curvops.core.data_checks import changed_data_message, check_data, unpack
from curvops.core.denominators import Denominator


@dataclass
class Batch:
    """One batch on the operator's device: inputs ``X``, targets ``y``, ``size`` B, its
    ``index`` in the data, and ``denominator`` d_b (what a "mean" loss divides it by).
    A micro-batch (``curvops.operators.exact.micro_batches``) is ``piece`` j of the data's
    batch ``whole``, whose tensors it views."""

    X: Any
    y: Any
    size: int
    index: int
    denominator: float = 1.0
    piece: int = 0
    whole: Batch | None = None

    @property
    def key(self) -> tuple[int, int]:
        """(index, piece): the batch's place in a pass."""
        return self.index, self.piece

    def head(self, k: int) -> Batch:
        """The first k points: every tensor in X and y with the batch's leading size B, cut
        (the whole batch when k >= B or X holds no such tensor); the denominator is kept."""
        B = self.size
        if k >= B or not _has_batch_tensor(self.X, B):
            return self
        return Batch(_cut(self.X, B, k), _cut(self.y, B, k), k, self.index, self.denominator)


def _cut(obj: Any, B: int, k: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[:k] if obj.ndim and obj.shape[0] == B else obj
    if isinstance(obj, dict):
        return type(obj)({key: _cut(v, B, k) for key, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cut(v, B, k) for v in obj)
    return obj


def _has_batch_tensor(obj: Any, B: int) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.ndim > 0 and obj.shape[0] == B
    if isinstance(obj, dict):
        return any(_has_batch_tensor(v, B) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_batch_tensor(v, B) for v in obj)
    return False


class DataLoop:
    """Re-iterates ``data`` (pairs ``(X, y)``), moving batches to ``device``.

    ``X`` may be a tensor (B = X.shape[0]) or a mapping (B = the leading size its tensors
    share, or ``batch_size_fn(X)``); ``targets(y)`` turns the data's y into the loss's
    targets (default: y itself); ``denominator(y, B)`` gives each batch's d_b (default B).
    Floating-point tensors are cast to ``dtype``, so a float32 data set feeds a float64 model.
    Once ``count()`` has run, every pass must yield the same points, in any order: as many
    (a one-shot iterable, empty on its second pass, raises instead of silently giving a
    wrong N) and with the same checksum (augmentation or another subset raises).
    ``keep_bytes`` > 0: the first pass checked against the counting one is kept on the
    device, when its tensors take at most that many bytes and the data are not a list or
    tuple of batches already on the device (a DataLoader: new tensors every pass); later
    passes replay it, without reading ``data`` again, so the batches are the same tensor
    objects every pass (see ``curvops.operators.exact.graph_cache``).
    """

    def __init__(
        self,
        data: Iterable,
        device: torch.device,
        dtype: torch.dtype,
        batch_size_fn: Callable[[Any], int] | None = None,
        progress: bool = False,
        allow_empty: bool = False,
        denominator: Denominator | None = None,
        targets: Callable[[Any], Any] | None = None,
        keep_bytes: float = 0.0,
    ) -> None:
        check_data(data)
        self.data = data
        self.device = device
        self.dtype = dtype
        self.batch_size_fn = batch_size_fn
        self.progress = progress
        self.allow_empty = allow_empty  # a distributed rank may hold no data
        self.denominator = denominator or (lambda y, size: float(size))
        self.targets = targets  # y -> the loss's targets (a causal LM's shifted labels)
        self.reference: PassChecksum | None = None  # the counting pass's checksum
        self.last: PassChecksum | None = None  # the last complete pass's
        self.keep_bytes = keep_bytes
        self.kept: list[Batch] | None = None  # a checked pass, replayed from then on
        # new tensors every pass: a DataLoader, targets made from y, a cast or a move
        self._copied = not isinstance(data, (list, tuple)) or targets is not None
        self._denominators: dict[int, tuple[torch.Tensor, int, float]] = {}

    @property
    def expected(self) -> int | None:
        """Data points per pass, once counted."""
        return None if self.reference is None else self.reference.points

    def __iter__(self) -> Iterator[Batch]:
        """The batches with points (d_b may be 0: every target ignored); checks the pass
        once it is complete; replays the kept pass once there is one."""
        if self.kept is not None:
            yield from self._progress(self.kept)
            return
        checked = self.reference is not None and self.keep_bytes > 0
        keep: list[Batch] | None = [] if checked else None
        used, checksum, items = 0, PassChecksum(), 0
        for index, item in enumerate(self._progress(self.data)):
            X, y = unpack(item, index)
            X, y = self._move(X), self._move(y if self.targets is None else self.targets(y))
            size = self.batch_size(X)
            checksum.add(X, y, size)
            items += 1
            if not size:
                continue
            batch = Batch(X, y, size, index, self._denominator(y, size))
            used += nbytes(X) + nbytes(y)
            keep = keep if keep is not None and used <= self.keep_bytes else None
            if keep is not None:
                keep.append(batch)
            yield batch
        self._check_pass(checksum, items)
        self.last = checksum
        if keep is not None and self._copied:
            self.kept = keep

    def _denominator(self, y: Any, size: int) -> float:
        """d_b of a batch; remembered for a target tensor of the user's own list (the same
        object every pass) while its version counter stands still, so that a product reads
        no count from the device (a GPU sync per batch) after the first pass."""
        if self._copied or not isinstance(y, torch.Tensor):
            self._denominators.clear()
            return self.denominator(y, size)
        known = self._denominators.get(id(y))
        if known is not None and known[0] is y and known[1] == y._version:
            return known[2]
        d = self.denominator(y, size)
        self._denominators[id(y)] = (y, y._version, d)
        return d

    def _progress(self, batches: Iterable) -> Iterable:
        """``batches``, with a tqdm bar if ``progress``."""
        if self.progress:
            total = len(batches) if isinstance(batches, Sized) else None
            from tqdm.auto import tqdm  # imported only when asked for (notebook widgets)

            return tqdm(batches, total=total, desc="curvops batches", leave=False)
        return batches

    def _check_pass(self, checksum: PassChecksum, items: int) -> None:
        ref = self.reference
        if ref is not None and checksum.points != ref.points:
            raise ValueError(
                f"data yielded {checksum.points} data points in this pass but {ref.points} in "
                "the first one: curvops iterates the data once per product, so it must yield "
                "the same points every time (not a one-shot iterable, nor a sampler whose "
                "length changes); pass a list of (X, y) batches or a DataLoader"
            )
        if ref is not None and not checksum.same_as(ref):
            raise ValueError(changed_data_message())
        if checksum.points == 0 and not self.allow_empty:
            what = f"its {items} batches are all empty" if items else "no batches"
            raise ValueError(
                f"data yielded no data points ({what}): pass a non-empty list of (X, y) "
                "batches or a DataLoader"
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

    def count(self) -> tuple[int, float]:
        """(N, D): data points and Σ_b d_b over one pass (no forward passes); every later
        pass must yield the same points (count and checksum)."""
        self.reference, self.kept = None, None
        total = sum(batch.denominator for batch in self)
        self.reference = self.last
        assert self.reference is not None
        return self.reference.points, total

    def _move(self, obj):
        if isinstance(obj, torch.Tensor):
            dtype = self.dtype if obj.is_floating_point() else obj.dtype
            moved = obj.to(device=self.device, dtype=dtype, non_blocking=True)
            self._copied = self._copied or moved is not obj
            return moved
        if isinstance(obj, Mapping):
            return type(obj)({k: self._move(v) for k, v in obj.items()})  # type: ignore[call-arg]
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._move(v) for v in obj)
        return obj


def nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or mappings / sequences of them)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0
