"""``compare``: check and align the operators, then take the dense or the probe route."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from curvops.compare.align import align, find_blocks
from curvops.compare.dense import dense_route
from curvops.compare.job import Job
from curvops.compare.probed import probe_route
from curvops.compare.report import Comparison
from curvops.compare.structures import block_structures, structure_errors
from curvops.core.checks import check_count
from curvops.interface import TorchMatmat, torch_matmat

RESTRICTED_MAX = 2**31  # P · blocks · probes up to this: per-block restricted probes by default


def compare(
    exact: Any,
    approx: Any,
    k: int = 10,
    n_probes: int = 100,
    seed: int = 0,
    gradient: torch.Tensor | np.ndarray | None = None,
    damping: float | None = None,
    dense_max: int = 3000,
    backend: str = "lanczos",
    exact_name: str | None = None,
    tol: float = 1e-4,
    ncv: int | None = None,
    block_probes: int | None = None,
    solve_tol: float = 1e-4,
    solve_maxiter: int = 100,
    precondition: bool = False,
    eig_maxiter: int | None = None,
) -> Comparison:
    """Compare ``exact`` with one or several approximations (an operator, list or dict name -> op).

    Operators with ``params`` (curvops operators) must hold the same tensors (by identity):
    another order is aligned to the exact operator's, another set is a ValueError naming the
    parameters that differ. Operators without ``params`` are compared by shape only, in the
    order they come. Per-block errors use the blocks of the first operator that has them
    (exact first), taken as parameter groups; an approximation that reports its blocks'
    ``structures`` (KFAC, EKFAC) also gets errors per structure (``structure_errors``).
    ``gradient`` (P,): the direction for the natural-gradient cosine; by default the loss
    gradient when ``exact`` has ``gradient()``.
    ``damping``: λ for (A + λI)⁻¹ (default: 1e-3 · λ_max(A)). ``dense_max``: largest P for
    the exact, dense route (``Comparison.method`` says which route was taken).

    Above ``dense_max`` (the probe route, ``curvops.compare.probes``) nothing is O(P²):
    ``n_probes`` seeded ±1 probes pass through every operator in chunks (the Frobenius
    errors, traces and per-block errors all come from these products; per block "direct"
    when the operators keep to the blocks, else an unbiased estimate from pairs of probes,
    both with standard errors; ``block_probes`` > 0 adds that many probes per block,
    restricted to it: blocks × probes more products, exact where A_bb = B_bb; None: n_probes
    of them while P · blocks · n_probes <= ``RESTRICTED_MAX`` = 2³¹, else none), the
    spectra (KFAC / EKFAC in closed form, ``top_eigenpairs``, no products; others by
    ``eigsh`` with ``tol``, ``ncv`` and at most ``eig_maxiter`` restart cycles, about
    ncv + (eig_maxiter − 1)(ncv − k)/2 products, None: eigsh's default;
    ``cost["spectra"]`` says which, ``cost["eigsh_converged"]`` whether each met ``tol``),
    the natural gradient of the exact operator by CG (``precondition=True``: preconditioned
    with a KFAC / EKFAC approximation's closed-form inverse), at most ``solve_maxiter``
    products to a relative residual ``solve_tol``
    (reported in ``Comparison.cost``).
    ``Comparison.cost`` states the products per operator and a memory estimate
    (``curvops.compare.cost``); the exact operator makes about ``n_probes`` + those of
    ``eigsh(k)`` + ``solve_maxiter`` products at most.
    """
    start = time.perf_counter()
    ops = _named(approx)
    aligned = {name: align(exact, op, name) for name, op in ops.items()}
    A = torch_matmat(exact)
    for name, (op, _) in aligned.items():
        size = _size(op)
        if size != A.size:
            raise ValueError(
                f"{name} has size {size}, the exact operator {A.size}: compare needs one shape"
            )
    if not 0 < k < A.size:
        raise ValueError(f"k must be in [1, P) with P={A.size}, got {k}")
    if eig_maxiter is not None:
        check_count("eig_maxiter", eig_maxiter, 1)
    blocks = find_blocks(exact, list(ops.values()))
    if block_probes is None:
        small = A.size * len(blocks) * n_probes <= RESTRICTED_MAX
        block_probes = n_probes if small else 0
    job = Job(
        exact=exact, A=A,
        approx={name: op for name, (op, _) in aligned.items()},
        matched_by={name: how for name, (_, how) in aligned.items()},
        k=k, blocks=blocks, g=_gradient(exact, gradient, A),
        damping=damping, n_probes=n_probes, seed=seed, backend=backend, tol=tol, ncv=ncv,
        block_probes=block_probes, solve_tol=solve_tol, solve_maxiter=solve_maxiter,
        precondition=precondition, eig_maxiter=eig_maxiter,
    )  # fmt: skip
    dense = A.size <= dense_max
    exact_part, reports = (dense_route if dense else probe_route)(job)
    for report, op in zip(reports, ops.values()):
        report.block_structures = block_structures(op, exact, job.blocks)
        report.structure_errors = structure_errors(
            report.block_structures,
            report.block_abs_errors,
            exact_part["exact_block_norms"],
            exact_part.get("unresolved_blocks", []),
        )
    return Comparison(
        exact_name=exact_name or type(exact).__name__,
        **exact_part,
        approximations=reports,
        method="dense" if dense else "hutchinson",
        k=k,
        seconds=time.perf_counter() - start,
        cost=job.cost,
    )


def _size(op) -> int:
    shape = getattr(op, "shape", None)
    return int(shape[0]) if shape is not None else torch_matmat(op).size


def _named(approx) -> dict:
    if isinstance(approx, dict):
        return dict(approx)
    ops = approx if isinstance(approx, (list, tuple)) else [approx]
    names: dict = {}
    for op in ops:
        base = getattr(op, "name", None) or type(op).__name__.removesuffix("Operator")
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names[name] = op
    return names


def _gradient(exact, gradient, A: TorchMatmat):
    if gradient is None:
        return exact.gradient().double() if hasattr(exact, "gradient") else None
    g = torch.as_tensor(
        np.asarray(gradient) if not isinstance(gradient, torch.Tensor) else gradient
    )
    if g.shape != (A.size,):
        raise ValueError(f"gradient must have shape ({A.size},), got {tuple(g.shape)}")
    return g.double()
