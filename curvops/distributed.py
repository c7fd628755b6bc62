"""torch.distributed helpers for the data-parallel operators.

Each rank passes its own shard of the data and ``process_group=`` to an operator; products
and N are then summed with one ``all_reduce`` per matmat, and every rank gets the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank_and_world_size(process_group: Any = None) -> tuple[int, int]:
    """(rank, world size) in ``process_group``; (0, 1) without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(process_group), dist.get_world_size(process_group)


def shard(items: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's contiguous share of ``items`` (the first ``len % world`` ranks get one more).

    A rank may get nothing when there are fewer items than ranks; it still takes part.
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world_size()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


def all_reduce_sum(t: torch.Tensor, process_group: Any = None) -> torch.Tensor:
    """Sum ``t`` in place over the ranks of ``process_group`` (no-op when it is None)."""
    if process_group is not None:
        dist.all_reduce(t, group=process_group)
    return t


def all_reduce_sum_many(
    tensors: Sequence[torch.Tensor], process_group: Any = None
) -> list[torch.Tensor]:
    """Sum several tensors over the ranks with ONE ``all_reduce`` of their concatenation.

    Returns new tensors shaped like the inputs (the inputs themselves when ``process_group``
    is None). All tensors must share a device and dtype.
    """
    if process_group is None or not tensors:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=process_group)
    parts = torch.split(flat, [t.numel() for t in tensors])
    return [part.view_as(t) for part, t in zip(parts, tensors)]


def broadcast(t: torch.Tensor, process_group: Any = None, src: int = 0) -> torch.Tensor:
    """Copy rank ``src``'s ``t`` to every rank (no-op when ``process_group`` is None)."""
    if process_group is not None:
        dist.broadcast(t, src=dist.get_global_rank(process_group, src), group=process_group)
    return t
