"""The two routes of ``compare``: dense matrices (exact numbers) or seeded probes (estimates).

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

import numpy as np
import torch

from curvops.compare.align import Block, blocks_in_exact_order
from curvops.compare.cost import cost_record, dense_bytes, probe_bytes
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


# ------------------------------------------------------------------------------ dense route
def dense_route(job: Job) -> tuple[dict, list[ApproxReport]]:
    """Exact numbers from the dense (P, P) matrices."""
    job.mms = {"exact": job.A}
    job.start = {"exact": job.A.n_matvecs}
    DA = _dense(job.A)
    valsA, vecsA = _top_k(DA, job.k)
    lam = job.damping if job.damping is not None else 1e-3 * float(valsA[0])
    natA = _solve(DA, job.g, lam) if job.g is not None else None
    idx = [b.index.to(DA.device) for b in job.blocks]
    norms = [float(DA[i[:, None], i].norm()) for i in idx]
    zero = [n <= job.zero_level(float(DA.norm())) for n in norms]
    reports = []
    for name, op in job.approx.items():
        job.mms[name] = torch_matmat(op)
        job.start[name] = job.mms[name].n_matvecs
        DB = _dense(job.mms[name]).to(DA.device)
        valsB, vecsB = _top_k(DB, job.k)
        diffs = [float((DA[i[:, None], i] - DB[i[:, None], i]).norm()) for i in idx]
        natB = _solve(DB, job.g, lam) if job.g is not None else None
        reports.append(
            ApproxReport(
                name=name,
                frobenius_error=_ratio(float((DA - DB).norm()), float(DA.norm())),
                frobenius_stderr=0.0,
                trace=float(DB.trace()),
                trace_stderr=0.0,
                eigenvalues=valsB.cpu().numpy(),
                cosines=torch.linalg.svdvals(vecsA.T @ vecsB).cpu().numpy(),
                **_block_fields(job.blocks, diffs, norms, zero),
                natural_gradient_cosine=_cosine(natA, natB),
                matched_by=job.matched_by[name],
            )
        )
    exact_part = dict(
        exact_trace=float(DA.trace()),
        exact_trace_stderr=0.0,
        exact_eigenvalues=valsA.cpu().numpy(),
        damping=lam if job.g is not None else None,
    )
    job.cost = cost_record(job.mms, job.start, dense_bytes(job.A.size, len(job.approx)))
    return {**exact_part, **_exact_block_fields(job.blocks, norms, zero)}, reports


def _dense(mm: TorchMatmat) -> torch.Tensor:
    eye = torch.eye(mm.size, device=mm.device, dtype=torch.float64).to(mm.dtype)
    D = torch.cat([mm(eye[:, i : i + 512]) for i in range(0, mm.size, 512)], dim=1).double()
    return (D + D.T) / 2


def _top_k(D: torch.Tensor, k: int):
    vals, vecs = torch.linalg.eigh(D)
    return vals.flip(0)[:k], vecs.flip(1)[:, :k]


def _solve(D: torch.Tensor, g: torch.Tensor, lam: float) -> torch.Tensor:
    eye = torch.eye(D.shape[0], dtype=D.dtype, device=D.device)
    return torch.linalg.solve(D + lam * eye, g.to(D))


# ------------------------------------------------------------------------------ probe route
def probe_route(job: Job) -> tuple[dict, list[ApproxReport]]:
    """Hutchinson estimates from seeded ±1 probes in chunks, ``eigsh`` spectra, capped solves
    (``curvops.compare.probes``, ``curvops.compare.solve``); memory O(P), no dense matrix."""
    mms = {"exact": job.A, **{name: torch_matmat(op) for name, op in job.approx.items()}}
    start = {name: mm.n_matvecs for name, mm in mms.items()}
    how = {name: _estimator(job, op) for name, op in job.approx.items()}
    exact_how = _estimator(job, None)
    sums = _probe_sums(job, mms, how, exact_how)
    A_sums, diffs_sums, traces = sums
    eigA = _top(job, job.A, "exact", job.exact)
    UA = torch.as_tensor(eigA.eigenvectors, dtype=torch.float32)
    lam = job.damping if job.damping is not None else 1e-3 * float(eigA.eigenvalues[0])
    natA, solve = (None, None)
    if job.g is not None:
        natA, solve = exact_solve(
            job.exact, job.A, job.g, lam, job.approx, job.solve_tol, job.solve_maxiter,
            job.precondition,
        )  # fmt: skip
    trA, seA = mean_se(A_sums.quad)
    norm_A = math.sqrt(float(A_sums.sq.mean()))
    exact_blocks = [A_sums.block(b, exact_how) for b in range(len(job.blocks))]
    norms = [math.sqrt(max(t, 0.0)) for t, _ in exact_blocks]
    level = job.zero_level(norm_A)
    spread = [jackknife_se(loo) for _, loo in exact_blocks]
    zero = [n <= level and math.sqrt(se) <= level for n, se in zip(norms, spread)]
    unresolved = [  # ‖A_bb‖² not above 2 of its standard errors: the probes cannot tell
        not z and t <= RESOLVED_SE * se for (t, _), se, z in zip(exact_blocks, spread, zero)
    ]
    reports = []
    for name, op in job.approx.items():
        D = diffs_sums[name]
        err, err_se = ratio_sqrt(D.sq, A_sums.sq)
        trB, seB = _trace_of(op, traces[name])
        eigB = _top(job, mms[name], name, op)
        UB = torch.as_tensor(eigB.eigenvectors, dtype=torch.float32)
        cosines = torch.linalg.svdvals((UA.T @ UB).double()).numpy()
        del UB, eigB.eigenvectors
        natB = None
        if job.g is not None:
            natB = approx_solve(op, lam, job.g, job.solve_tol, job.solve_maxiter)
        blocks = [D.block(b, how[name]) for b in range(len(job.blocks))]
        abs_err = [math.sqrt(max(t, 0.0)) for t, _ in blocks]
        stderrs = {
            blk.name: jackknife_ratio(d, a)[1]
            for blk, d, a in zip(job.blocks, blocks, exact_blocks)
        }
        reports.append(
            ApproxReport(
                name=name,
                frobenius_error=err,
                frobenius_stderr=err_se,
                trace=trB,
                trace_stderr=seB,
                eigenvalues=np.asarray(eigB.eigenvalues),
                cosines=cosines,
                **_block_fields(
                    job.blocks, abs_err, norms, [z or u for z, u in zip(zero, unresolved)]
                ),
                block_stderrs=stderrs,
                natural_gradient_cosine=_cosine(natA, natB),
                matched_by=job.matched_by[name],
            )
        )
    exact_part = dict(
        exact_trace=trA,
        exact_trace_stderr=seA,
        exact_eigenvalues=np.asarray(eigA.eigenvalues),
        damping=lam if job.g is not None else None,
    )
    c = chunk_columns(job.A.size, job.n_probes)
    memory = probe_bytes(
        job.A.size, job.A.dtype.itemsize, len(job.approx), job.k, job.ncv or max(2 * job.k + 1, 20),
        c, job.n_probes,
    )  # fmt: skip
    job.cost = cost_record(
        mms, start, memory, probes=job.n_probes, chunk_columns=c, solve=solve,
        block_estimator={"exact": exact_how, **how}, eigsh_converged=job.converged,
        spectra=job.spectra,
    )  # fmt: skip
    unresolved_names = [b.name for b, u in zip(job.blocks, unresolved) if u]
    fields = _exact_block_fields(job.blocks, norms, zero)
    return {**exact_part, **fields, "unresolved_blocks": unresolved_names}, reports


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


# ------------------------------------------------------------------------------ shared
def _block_fields(blocks: list[Block], diffs, norms, zero) -> dict:
    """ApproxReport's block_errors (NaN at zero exact blocks) and block_abs_errors."""
    errors = {b.name: math.nan if z else d / n for b, d, n, z in zip(blocks, diffs, norms, zero)}
    return {"block_errors": errors, "block_abs_errors": {b.name: d for b, d in zip(blocks, diffs)}}


def _exact_block_fields(blocks: list[Block], norms, zero) -> dict:
    return {
        "exact_block_norms": {b.name: n for b, n in zip(blocks, norms)},
        "zero_blocks": [b.name for b, z in zip(blocks, zero) if z],
    }


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    a, b = a.double().cpu(), b.double().cpu()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))
