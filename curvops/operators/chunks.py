"""Column chunking of a matmat: at most ``chunk_size`` columns multiplied at once."""

from __future__ import annotations

from collections.abc import Callable

import torch


def by_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], M: torch.Tensor, chunk_size: int | None
) -> torch.Tensor:
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
