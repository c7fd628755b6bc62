"""Errors per block structure: how good each kind of block of an approximation is.

An approximation with ``structures`` (KFAC / EKFAC: block name -> "kronecker",
"kronecker-diagonal-A", "exact", "diagonal") labels every entry of the flat vector by the
structure of its block. A compared block (in the exact operator's order) takes the
structure of its entries ("mixed" when they differ); per structure s,
  error_s = √(Σ_{b ∈ s} ‖A_bb − B_bb‖²_F) / √(Σ_{b ∈ s} ‖A_bb‖²_F)
over the compared blocks of that structure (NaN when the exact blocks are all zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from curvops.compare.align import Block, param_positions


def block_structures(op: Any, exact: Any, blocks: list[Block]) -> dict[str, str]:
    """Compared block name -> the structure of ``op``'s blocks over its entries ({} when
    ``op`` reports none, or is matched by shape only)."""
    structures = getattr(op, "structures", None)
    layout = getattr(op, "layout", None)
    where = param_positions(exact)
    if not structures or layout is None or where is None:
        return {}
    size = sum(p.numel() for p in exact.params)
    labels = [""] * size
    for block, structure in zip(layout.blocks, structures.values()):
        for i in block:
            key = id(layout.params[i])
            if key not in where:
                return {}
            for j in where[key].tolist():
                labels[j] = structure
    out = {}
    for b in blocks:
        kinds = {labels[j] for j in b.index.tolist()}
        out[b.name] = kinds.pop() if len(kinds) == 1 else "mixed"
    return out


def structure_errors(
    labels: dict[str, str],
    abs_errors: dict[str, float],
    norms: dict[str, float],
    unresolved: Sequence[str] = (),
) -> dict[str, float]:
    """Per structure: the relative Frobenius error over its blocks (see the module doc);
    NaN for a structure holding a block the probes did not resolve (``unresolved``)."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for name, structure in labels.items():
        if name in unresolved:
            num[structure], den[structure] = math.nan, math.nan
            continue
        num[structure] = num.get(structure, 0.0) + abs_errors[name] ** 2
        den[structure] = den.get(structure, 0.0) + norms[name] ** 2
    return {s: math.sqrt(num[s] / den[s]) if den[s] > 0 else math.nan for s in num}  # NaN stays
