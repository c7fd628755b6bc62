"""What both routes of ``compare`` share: the ``Job`` (the exact operator, the aligned
approximations, the options) and the report fields built from per-block numbers.

Every approximation arrives in the exact operator's flat order (see ``align``); blocks are
index arrays into that order. A block whose exact curvature is at round-off level
(‖A_bb‖_F <= ``ZERO_RTOL`` · eps · ‖A‖_F) has no relative error: NaN, with the absolute one.
On the probe route so has a block whose estimated ‖A_bb‖²_F is not above ``RESOLVED_SE``
standard errors (jackknife over the probes): listed in ``unresolved_blocks``, never called zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from curvops.compare.align import Block
from curvops.interface import TorchMatmat

ZERO_RTOL = 100.0  # in machine epsilons of the exact operator's dtype
RESOLVED_SE = 2.0  # a probed ‖A_bb‖² counts when above this many standard errors


@dataclass
class Job:
    """What both routes need: the exact A, the aligned approximations and the options."""

    exact: Any
    A: TorchMatmat
    approx: dict[str, Any]  # name -> operator in the exact operator's flat order
    matched_by: dict[str, str]
    k: int
    blocks: list[Block]
    g: torch.Tensor | None  # (P,) float64
    damping: float | None
    n_probes: int
    seed: int
    backend: str
    tol: float = 1e-4  # eigsh's, probe route
    ncv: int | None = None  # eigsh's Krylov basis, probe route
    block_probes: int = 0  # restricted probes per block (0: none)
    solve_tol: float = 1e-4  # natural gradient, probe route
    solve_maxiter: int = 100
    precondition: bool = False  # the exact solve preconditioned by an approximation's inverse
    eig_maxiter: int | None = None  # eigsh's restart cycles, probe route (None: its default)
    converged: dict = field(default_factory=dict)  # operator -> its top-k converged
    spectra: dict = field(default_factory=dict)  # operator -> "eigsh" or "closed form"
    cost: dict = field(default_factory=dict)  # filled by the route
    mms: dict = field(default_factory=dict)  # name -> the counting products
    start: dict = field(default_factory=dict)  # name -> n_matvecs before the route

    def zero_level(self, norm_A: float) -> float:
        """‖A_bb‖_F at or below this is a zero exact block."""
        return ZERO_RTOL * torch.finfo(self.A.dtype).eps * norm_A


def block_fields(blocks: list[Block], diffs, norms, zero) -> dict:
    """ApproxReport's block_errors (NaN at zero exact blocks) and block_abs_errors."""
    errors = {b.name: math.nan if z else d / n for b, d, n, z in zip(blocks, diffs, norms, zero)}
    return {"block_errors": errors, "block_abs_errors": {b.name: d for b, d in zip(blocks, diffs)}}


def exact_block_fields(blocks: list[Block], norms, zero) -> dict:
    return {
        "exact_block_norms": {b.name: n for b, n in zip(blocks, norms)},
        "zero_blocks": [b.name for b, z in zip(blocks, zero) if z],
    }


def ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    a, b = a.double().cpu(), b.double().cpu()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))
