"""The probe route of ``compare``: estimates from seeded ±1 probes in chunks, ``eigsh`` or
closed-form spectra and capped solves; memory O(P), no dense matrix
(``curvops.compare.probes``: the estimators, ``curvops.compare.solve``: the solves)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from curvops.compare.align import blocks_in_exact_order
from curvops.compare.cost import cost_record, probe_bytes
from curvops.compare.job import RESOLVED_SE, Job, block_fields, cosine, exact_block_fields
from curvops.compare.probes import (
    Probes,
    Sums,
    accumulate,
    apply,
    chunk_columns,
    jackknife_ratio,
    jackknife_se,
    mean_se,
    ratio_sqrt,
)
from curvops.compare.report import ApproxReport
from curvops.compare.solve import approx_solve, exact_solve
from curvops.interface import TorchMatmat, torch_matmat
from curvops.linalg.eigsh import eigsh


@dataclass
class ExactBlocks:
    """The exact operator's per-block estimates: ‖A_bb‖²_F with its leave-one-out values,
    ‖A_bb‖_F, and which blocks are zero (round-off) or unresolved (within the noise)."""

    estimates: list[tuple[float, np.ndarray]]
    norms: list[float]
    zero: list[bool]
    unresolved: list[bool]

    @classmethod
    def of(cls, job: Job, A_sums: Sums, how: str) -> ExactBlocks:
        estimates = [A_sums.block(b, how) for b in range(len(job.blocks))]
        norms = [math.sqrt(max(t, 0.0)) for t, _ in estimates]
        level = job.zero_level(math.sqrt(float(A_sums.sq.mean())))
        spread = [jackknife_se(loo) for _, loo in estimates]
        zero = [n <= level and math.sqrt(se) <= level for n, se in zip(norms, spread)]
        unresolved = [  # ‖A_bb‖² not above RESOLVED_SE standard errors: the probes cannot tell
            not z and t <= RESOLVED_SE * se for (t, _), se, z in zip(estimates, spread, zero)
        ]
        return cls(estimates, norms, zero, unresolved)

    @property
    def no_relative_error(self) -> list[bool]:
        return [z or u for z, u in zip(self.zero, self.unresolved)]


def probe_route(job: Job) -> tuple[dict, list[ApproxReport]]:
    """Hutchinson estimates from seeded ±1 probes in chunks, top-k spectra, capped solves;
    memory O(P), no dense matrix."""
    mms = {"exact": job.A, **{name: torch_matmat(op) for name, op in job.approx.items()}}
    start = {name: mm.n_matvecs for name, mm in mms.items()}
    how = {name: _estimator(job, op) for name, op in job.approx.items()}
    exact_how = _estimator(job, None)
    A_sums, diffs_sums, traces = _probe_sums(job, mms, how, exact_how)
    eigA = _top(job, job.A, "exact", job.exact)
    UA = torch.as_tensor(eigA.eigenvectors, dtype=torch.float32)
    lam = job.damping if job.damping is not None else 1e-3 * float(eigA.eigenvalues[0])
    natA, solve = (None, None)
    if job.g is not None:
        natA, solve = exact_solve(
            job.exact, job.A, job.g, lam, job.approx, job.solve_tol, job.solve_maxiter,
            job.precondition,
        )  # fmt: skip
    exact = ExactBlocks.of(job, A_sums, exact_how)
    reports = [
        _report(job, name, op, mms[name], diffs_sums[name], how[name], traces[name], A_sums,
                exact, UA, lam, natA)
        for name, op in job.approx.items()
    ]  # fmt: skip
    trA, seA = mean_se(A_sums.quad)
    job.cost = _cost(job, mms, start, solve, {"exact": exact_how, **how})
    return {
        "exact_trace": trA,
        "exact_trace_stderr": seA,
        "exact_eigenvalues": np.asarray(eigA.eigenvalues),
        "damping": lam if job.g is not None else None,
        **exact_block_fields(job.blocks, exact.norms, exact.zero),
        "unresolved_blocks": [b.name for b, u in zip(job.blocks, exact.unresolved) if u],
    }, reports


def _report(
    job: Job, name: str, op: Any, mm: TorchMatmat, D: Sums, how: str, trace_samples, A_sums: Sums,
    exact: ExactBlocks, UA: torch.Tensor, lam: float, natA: torch.Tensor | None,
) -> ApproxReport:  # fmt: skip
    """One approximation's report from its probe sums, spectrum and solve."""
    err, err_se = ratio_sqrt(D.sq, A_sums.sq)
    trB, seB = _trace_of(op, trace_samples)
    eigB = _top(job, mm, name, op)
    UB = torch.as_tensor(eigB.eigenvectors, dtype=torch.float32)
    cosines = torch.linalg.svdvals((UA.T @ UB).double()).numpy()
    del UB, eigB.eigenvectors
    natB = (
        approx_solve(op, lam, job.g, job.solve_tol, job.solve_maxiter)
        if job.g is not None
        else None
    )
    blocks = [D.block(b, how) for b in range(len(job.blocks))]
    abs_err = [math.sqrt(max(t, 0.0)) for t, _ in blocks]
    stderrs = {
        blk.name: jackknife_ratio(d, a)[1] for blk, d, a in zip(job.blocks, blocks, exact.estimates)
    }
    return ApproxReport(
        name=name,
        frobenius_error=err,
        frobenius_stderr=err_se,
        trace=trB,
        trace_stderr=seB,
        eigenvalues=np.asarray(eigB.eigenvalues),
        cosines=cosines,
        **block_fields(job.blocks, abs_err, exact.norms, exact.no_relative_error),
        block_stderrs=stderrs,
        natural_gradient_cosine=cosine(natA, natB),
        matched_by=job.matched_by[name],
    )


def _cost(job: Job, mms: dict, start: dict, solve: Any, estimators: dict) -> dict:
    """``Comparison.cost``: products per operator, the memory estimate, how each part ran."""
    c = chunk_columns(job.A.size, job.n_probes)
    memory = probe_bytes(
        job.A.size, job.A.dtype.itemsize, len(job.approx), job.k, job.ncv or max(2 * job.k + 1, 20),
        c, job.n_probes,
    )  # fmt: skip
    return cost_record(
        mms, start, memory, probes=job.n_probes, chunk_columns=c, solve=solve,
        block_estimator=estimators, eigsh_converged=job.converged, spectra=job.spectra,
    )  # fmt: skip


def _top(job: Job, mm: TorchMatmat, name: str, op: Any = None) -> Any:
    """The top-k eigenpairs: in closed form when ``op`` has them (KFAC / EKFAC:
    ``top_eigenpairs``, no products), else by ``eigsh`` (at most ``job.eig_maxiter``
    restart cycles); ``job.converged`` and ``job.spectra`` say which and how it went."""
    if op is not None and hasattr(op, "top_eigenpairs"):
        values, U = op.top_eigenpairs(job.k)
        job.converged[name], job.spectra[name] = True, "closed form"
        return ClosedForm(values.double().cpu().numpy(), U.cpu())
    res = eigsh(mm, k=job.k, which="LA", tol=job.tol, backend=job.backend, seed=job.seed,
                ncv=job.ncv, max_iter=job.eig_maxiter)  # fmt: skip
    job.converged[name], job.spectra[name] = bool(res.all_converged), "eigsh"
    return res


@dataclass
class ClosedForm:
    """Top eigenpairs from an operator's own closed form: values (k,), vectors (P, k)."""

    eigenvalues: np.ndarray
    eigenvectors: Any


def _estimator(job: Job, op) -> str:
    """How ‖M_bb‖_F is estimated for M = A (op None) or A − op (``curvops.compare.probes``):
    "direct" when every operator involved keeps to the blocks (declared
    ``is_block_diagonal`` over blocks that refine them), else "restricted" when
    ``job.block_probes`` > 0, else "pairs"."""
    ops = [job.exact] if op is None else [job.exact, op]
    if all(_keeps_blocks(o, job) for o in ops):
        return "direct"
    return "restricted" if job.block_probes else "pairs"


def _keeps_blocks(op, job: Job) -> bool:
    """Whether op's products never couple two compared blocks."""
    if not getattr(op, "is_block_diagonal", False) or getattr(op, "block_slices", None) is None:
        return False
    label = torch.full((job.A.size,), -1, dtype=torch.int64)
    for i, b in enumerate(job.blocks):
        label[b.index] = i
    try:
        own = blocks_in_exact_order(op, job.exact)
    except (KeyError, AttributeError):
        return False
    return all(len(torch.unique(label[b.index])) == 1 for b in own)


def _probe_sums(job: Job, mms: dict, how: dict, exact_how: str):
    """Probe statistics of A and of each A − B, and each B's zᵀBz; chunked products."""
    P, n = job.A.size, job.n_probes
    Z = Probes(P, n, job.seed, job.A.device)
    index = [b.index.to(job.A.device) for b in job.blocks]
    A_sums = Sums(n, len(index), exact_how == "pairs")
    diffs = {name: Sums(n, len(index), h == "pairs") for name, h in how.items()}
    traces = {name: torch.zeros(n, dtype=torch.float64) for name in job.approx}
    c = chunk_columns(P, n)
    for lo in range(0, n, c):
        Zc = Z.columns(lo, min(n, lo + c), job.A.dtype)
        AZ = apply(job.A, Zc)
        products, accs = [AZ], [A_sums]
        for name in job.approx:
            BZ = apply(mms[name], Zc)
            traces[name][lo : lo + Zc.shape[1]] = (Zc * BZ).double().sum(0).cpu()
            products.append(AZ - BZ)
            accs.append(diffs[name])
            del BZ
        accumulate(Z, lo, Zc, products, accs, index)
        del products, AZ
    if "restricted" in (exact_how, *how.values()):
        _restricted(job, mms, index, A_sums, diffs, [exact_how, *how.values()])
    return A_sums, diffs, traces


def _restricted(job: Job, mms: dict, index, A_sums: Sums, diffs: dict, hows: list) -> None:
    """Per block, ``block_probes`` probes zero outside it: ‖(M z_b)_b‖² of A and of each
    A − B whose estimator is "restricted" (their ``block_sq`` is replaced)."""
    n, P = job.block_probes, job.A.size
    Z = Probes(P, n, job.seed + 1, job.A.device)
    targets = [(None, acc) for acc, h in zip([A_sums], hows[:1]) if h == "restricted"]
    targets += [(name, diffs[name]) for name, h in zip(diffs, hows[1:]) if h == "restricted"]
    for _, acc in targets:
        acc.block_sq = torch.zeros(len(index), n, dtype=torch.float64)
    c = chunk_columns(P, n)
    for b, idx in enumerate(index):
        for lo in range(0, n, c):
            Zb = torch.zeros(P, min(c, n - lo), dtype=job.A.dtype, device=job.A.device)
            Zb[idx] = Z.rows(idx, slice(lo, lo + Zb.shape[1]), job.A.dtype)
            AZ = apply(job.A, Zb)[idx]
            for name, acc in targets:
                M = AZ if name is None else AZ - apply(mms[name], Zb)[idx]
                acc.block_sq[b, lo : lo + Zb.shape[1]] = (M.double() ** 2).sum(0).cpu()


def _trace_of(op, samples: torch.Tensor) -> tuple[float, float]:
    if hasattr(op, "trace") and callable(op.trace):
        try:
            return float(op.trace()), 0.0
        except TypeError:  # a LinearOperator without a closed-form trace
            pass
    return mean_se(samples)
