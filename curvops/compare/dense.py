"""The dense route of ``compare``: exact numbers from the (P, P) matrices (small P)."""

from __future__ import annotations

import torch

from curvops.compare.cost import cost_record, dense_bytes
from curvops.compare.job import Job, block_fields, cosine, exact_block_fields, ratio
from curvops.compare.report import ApproxReport
from curvops.interface import TorchMatmat, torch_matmat


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
                frobenius_error=ratio(float((DA - DB).norm()), float(DA.norm())),
                frobenius_stderr=0.0,
                trace=float(DB.trace()),
                trace_stderr=0.0,
                eigenvalues=valsB.cpu().numpy(),
                cosines=torch.linalg.svdvals(vecsA.T @ vecsB).cpu().numpy(),
                **block_fields(job.blocks, diffs, norms, zero),
                natural_gradient_cosine=cosine(natA, natB),
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
    return {**exact_part, **exact_block_fields(job.blocks, norms, zero)}, reports


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
