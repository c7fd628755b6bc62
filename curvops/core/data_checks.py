"""The first mistakes in passing data, each refused with what to write instead."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


def check_data(data: Any) -> None:
    """Refuse what is not a re-iterable of (X, y) batches: an iterator, one (X, y) pair, a
    dataset of single points."""
    if isinstance(data, Iterator):  # never call iter() here: it may consume the data
        raise TypeError(
            "data is an iterator (e.g. a generator) that would be exhausted after one pass; "
            "curvops iterates the data once per product: pass a list of (X, y) batches or a "
            "DataLoader"
        )
    if _is_one_pair(data):
        raise TypeError(
            "data is a single (X, y) tuple, but curvops iterates data as a sequence of "
            "(X, y) batches: wrap it in a list, data=[(X, y)]"
        )
    if isinstance(data, Dataset) and not isinstance(data, (DataLoader, IterableDataset)):
        raise TypeError(
            f"data is a {type(data).__name__}, whose items are single points without a batch "
            "axis: wrap it in a DataLoader, data=torch.utils.data.DataLoader(dataset, "
            "batch_size=...)"
        )


def unpack(item: Any, index: int) -> tuple[Any, Any]:
    """(X, y) of one item of the data, or a ValueError saying what the item is instead."""
    if isinstance(item, Mapping):
        raise ValueError(
            f"batch {index} is a dict with keys {sorted(map(str, item))}, not a pair (X, y): "
            "the data must yield (inputs, targets) pairs, e.g. DataLoader(..., collate_fn=f) "
            "with f returning (inputs, targets); a dict of inputs is fine as X, with the "
            "labels separate: ({'input_ids': ids, 'attention_mask': mask}, labels)"
        )
    if isinstance(item, torch.Tensor):
        raise ValueError(
            f"batch {index} is a tensor of shape {tuple(item.shape)}, not a pair (X, y): "
            "the data must yield (inputs, targets) pairs; one batch is data=[(X, y)]"
        )
    try:
        X, y = item
    except (TypeError, ValueError):
        raise ValueError(
            f"batch {index} is not a pair (X, y): data must yield (inputs, targets) pairs"
        ) from None
    return X, y


def changed_data_message() -> str:
    return (
        "the data changed between passes: this pass yielded other points than the first "
        "one (their checksum differs), so every product would see another matrix. curvops "
        "iterates the data once per product; the cause is usually the data loader: random "
        "augmentation (transforms), DataLoader(shuffle=True, drop_last=True) (another subset "
        "each pass) or a sampler that picks another subset, or data changed in place. Use "
        "fixed data (no random transforms), drop_last=False, or shuffle=False, and build a "
        "new operator for new data"
    )


def _is_one_pair(data: Any) -> bool:
    """(X, y) itself: X a tensor or a dict of tensors, y a tensor."""
    return (
        isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[0], (torch.Tensor, Mapping))
        and isinstance(data[1], torch.Tensor)
    )
