"""Matching the operators of a comparison: parameters by identity, blocks by index arrays.

Operators with ``params`` (every curvops operator) are compared over the same tensors: an
approximation whose parameters come in another order is wrapped in ``Permuted``, its
products taken in the exact operator's flat order; different parameter sets are refused.
Operators without ``params`` (plain LinearOperators, arrays) are matched by shape only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from curvops.interface import SymmetricTorchOperator, torch_matmat
from curvops.operators.inverse import damped_inverse

MATCHED = ("parameters", "parameters, reordered", "shape")  # ApproxReport.matched_by


@dataclass(frozen=True)
class Block:
    """A diagonal block: its name and the indices (n_b,) of its entries in the exact order."""

    name: str
    index: torch.Tensor  # int64, not necessarily contiguous


class Permuted(SymmetricTorchOperator):
    """Π B Πᵀ (P, P): ``op`` with rows and columns reordered; entry i is op's entry perm[i].

    Products, ``trace`` and ``inverse`` (closed form when ``op`` has one) delegate to ``op``.
    """

    def __init__(self, op: Any, perm: torch.Tensor) -> None:
        self.op, self._mm = op, torch_matmat(op)
        self.device, self.torch_dtype = self._mm.device, self._mm.dtype
        self.perm = perm.to(self.device)
        self.is_psd = bool(getattr(op, "is_psd", False))
        dtype = np.float32 if self.torch_dtype == torch.float32 else np.float64
        super().__init__(dtype=np.dtype(dtype), shape=(self._mm.size, self._mm.size))

    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """(Π B Πᵀ) M for M (P,) or (P, k)."""
        X = torch.empty_like(M)
        X[self.perm] = M
        return self._mm(X)[self.perm]

    def trace(self) -> float:
        """tr B (invariant under the reordering); TypeError if ``op`` has no closed form."""
        trace = getattr(self.op, "trace", None)
        if not callable(trace):
            raise TypeError(f"{type(self.op).__name__} has no closed-form trace")
        return float(trace())

    def inverse(self, damping: float) -> Permuted:
        """(Π B Πᵀ + δI)⁻¹ = Π (B + δI)⁻¹ Πᵀ."""
        return Permuted(damped_inverse(self.op, damping), self.perm)


def align(exact: Any, op: Any, name: str) -> tuple[Any, str]:
    """``op`` in the exact operator's flat order, and how it was matched (one of MATCHED).

    Raises ValueError naming the parameters when the two operators hold different tensors.
    """
    mine, theirs = param_positions(exact), param_positions(op)
    if mine is None or theirs is None:
        return op, "shape"
    if mine.keys() != theirs.keys():
        raise ValueError(_difference(exact, op, name))
    perm = torch.cat([theirs[key] for key in mine])
    if bool((perm == torch.arange(len(perm))).all()):
        return op, "parameters"
    return Permuted(op, perm), "parameters, reordered"


def find_blocks(exact: Any, ops: list[Any]) -> list[Block]:
    """The blocks of the first operator (exact first) with more than one, in exact order."""
    for op in (exact, *ops):
        slices = getattr(op, "block_slices", None)
        if slices is not None and len(slices) > 1:
            return _blocks_of(op, exact)
    return []


def block_names(op: Any) -> list[str]:
    """The operator's block names; unnamed blocks ("block0", ...) are named by their parameters."""
    n = len(op.block_slices)
    names = list(getattr(op, "block_names", None) or [f"block{i}" for i in range(n)])
    layout = getattr(op, "layout", None)
    if names == [f"block{i}" for i in range(n)] and layout is not None:
        names = ["+".join(layout.names[i] for i in block) for block in layout.blocks]
    return names


def blocks_in_exact_order(op: Any, exact: Any) -> list[Block]:
    """``op``'s own blocks as index sets of the exact operator's flat order."""
    return _blocks_of(op, exact)


def _blocks_of(source: Any, exact: Any) -> list[Block]:
    """``source``'s blocks as parameter groups, indexed in the exact operator's flat order."""
    names, layout, where = (
        block_names(source),
        getattr(source, "layout", None),
        param_positions(exact),
    )
    if layout is None or where is None or param_positions(source) is None:  # matched by shape
        index = [torch.arange(s.start, s.stop) for s in source.block_slices]
    else:
        index = [torch.cat([where[id(layout.params[i])] for i in blk]) for blk in layout.blocks]
    return [Block(n, i) for n, i in zip(names, index)]


def param_positions(op: Any) -> dict[int, torch.Tensor] | None:
    """id(parameter) -> the indices of its entries in op's flat vector, in op's order."""
    params = getattr(op, "params", None)
    if params is None or not all(isinstance(p, torch.Tensor) for p in params):
        return None
    out, start = {}, 0
    for p in params:
        out[id(p)] = torch.arange(start, start + p.numel())
        start += p.numel()
    return out


def _names(op: Any) -> dict[int, str]:
    names = getattr(op, "param_names", None) or [f"params[{i}]" for i in range(len(op.params))]
    return {id(p): n for p, n in zip(op.params, names)}


def _difference(exact: Any, op: Any, name: str) -> str:
    mine, theirs = _names(exact), _names(op)
    only_exact = [n for key, n in mine.items() if key not in theirs] or ["none"]
    only_op = [n for key, n in theirs.items() if key not in mine] or ["none"]
    return (
        f"{name} and the exact operator are over different parameters: only in the exact "
        f"operator: {', '.join(only_exact)}; only in {name}: {', '.join(only_op)}. Parameters "
        "are matched by identity (an operator over a copy of the model has other tensors): "
        "build both operators from the same model and params"
    )
