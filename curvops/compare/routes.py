"""The two routes of ``compare``: dense matrices (exact numbers) or seeded probes (estimates).

Every approximation arrives in the exact operator's flat order (see ``align``); blocks are
index arrays into that order. A block whose exact curvature is at round-off level
(‖A_bb‖_F <= ``ZERO_RTOL`` · eps · ‖A‖_F) has no relative error: NaN, with the absolute one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from curvops.compare.align import Block
from curvops.compare.report import ApproxReport
from curvops.interface import TorchMatmat, torch_matmat
from curvops.operators.inverse import damped_inverse

ZERO_RTOL = 100.0  # in machine epsilons of the exact operator's dtype


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

    def zero_level(self, norm_A: float) -> float:
        """‖A_bb‖_F at or below this is a zero exact block."""
        return ZERO_RTOL * torch.finfo(self.A.dtype).eps * norm_A


# ------------------------------------------------------------------------------ dense route
def dense_route(job: Job) -> tuple[dict, list[ApproxReport]]:
    """Exact numbers from the dense (P, P) matrices."""
    DA = _dense(job.A)
    valsA, vecsA = _top_k(DA, job.k)
    lam = job.damping if job.damping is not None else 1e-3 * float(valsA[0])
    natA = _solve(DA, job.g, lam) if job.g is not None else None
    idx = [b.index.to(DA.device) for b in job.blocks]
    norms = [float(DA[i[:, None], i].norm()) for i in idx]
    zero = [n <= job.zero_level(float(DA.norm())) for n in norms]
    reports = []
    for name, op in job.approx.items():
        DB = _dense(torch_matmat(op)).to(DA.device)
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
    """Hutchinson estimates (seeded Rademacher probes) and ``eigsh`` spectra."""
    from curvops.linalg.eigsh import eigsh

    A = job.A
    Z = _rademacher(A.size, job.n_probes, job.seed).to(A.device, A.dtype)
    AZ = A(Z)
    eigA = eigsh(job.exact, k=job.k, which="LA", backend=job.backend, seed=job.seed)
    trA, seA = _mean_se((Z * AZ).sum(0))
    lam = job.damping if job.damping is not None else 1e-3 * float(eigA.eigenvalues[0])
    natA = _inverse_times(job.exact, lam, job.g) if job.g is not None else None
    UA = torch.as_tensor(eigA.eigenvectors, dtype=torch.float64)
    probes = _block_probes(A, job.blocks, Z)
    norm_A = math.sqrt(float((AZ.double() ** 2).sum(0).mean()))
    norms = [float(AZb.double().norm()) / math.sqrt(job.n_probes) for _, _, AZb in probes]
    zero = [n <= job.zero_level(norm_A) for n in norms]
    reports = []
    for name, op in job.approx.items():
        B = torch_matmat(op)
        BZ = B(Z.to(B.device, B.dtype)).to(AZ)
        err, err_se = _ratio_sqrt(((AZ - BZ) ** 2).sum(0), (AZ**2).sum(0))
        trB, seB = _trace_of(op, Z, BZ)
        eigB = eigsh(op, k=job.k, which="LA", backend=job.backend, seed=job.seed)
        UB = torch.as_tensor(eigB.eigenvectors, dtype=torch.float64)
        natB = _inverse_times(op, lam, job.g) if job.g is not None else None
        diffs = _probe_block_diffs(B, probes, job.n_probes)
        reports.append(
            ApproxReport(
                name=name,
                frobenius_error=err,
                frobenius_stderr=err_se,
                trace=trB,
                trace_stderr=seB,
                eigenvalues=np.asarray(eigB.eigenvalues),
                cosines=torch.linalg.svdvals(UA.T @ UB).numpy(),
                **_block_fields(job.blocks, diffs, norms, zero),
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
    return {**exact_part, **_exact_block_fields(job.blocks, norms, zero)}, reports


def _block_probes(A: TorchMatmat, blocks: list[Block], Z: torch.Tensor):
    """Per block b: its indices, Z_b (Z zero outside b) and (A Z_b) restricted to b."""
    out = []
    for b in blocks:
        idx = b.index.to(Z.device)
        Zb = torch.zeros_like(Z)
        Zb[idx] = Z[idx]
        out.append((idx, Zb, A(Zb)[idx]))
    return out


def _probe_block_diffs(B: TorchMatmat, probes, n_probes: int) -> list[float]:
    """‖(A − B) Z_b‖ restricted to b over √n: estimates ‖A_bb − B_bb‖_F (E‖M z‖² = ‖M‖²_F)."""
    out = []
    for idx, Zb, AZb in probes:
        BZb = B(Zb.to(B.device, B.dtype)).to(Zb)[idx]
        out.append(float((AZb - BZb).double().norm()) / math.sqrt(n_probes))
    return out


def _trace_of(op, Z, BZ) -> tuple[float, float]:
    if hasattr(op, "trace") and callable(op.trace):
        try:
            return float(op.trace()), 0.0
        except TypeError:  # a LinearOperator without a closed-form trace
            pass
    return _mean_se((Z * BZ).sum(0))


def _rademacher(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, k), generator=gen, dtype=torch.float64) * 2 - 1


def _mean_se(samples: torch.Tensor) -> tuple[float, float]:
    s = samples.double()
    return float(s.mean()), float(s.std() / len(s) ** 0.5) if len(s) > 1 else 0.0


def _ratio_sqrt(num: torch.Tensor, den: torch.Tensor) -> tuple[float, float]:
    """sqrt(mean num / mean den) and its standard error (delta method); NaN if den is 0."""
    num, den = num.double(), den.double()
    if float(den.mean()) == 0:
        return math.nan, 0.0
    n, R = len(num), float(num.mean() / den.mean())
    resid = num - R * den
    se_R = float(resid.std() / (den.mean() * n**0.5)) if n > 1 else 0.0
    root = R**0.5
    return root, se_R / (2 * root) if root > 0 else 0.0


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


def _inverse_times(op, lam: float, g: torch.Tensor) -> torch.Tensor:
    """(op + λI)⁻¹ g (P,) in float64 on the host."""
    inverse_op = damped_inverse(op, lam)
    if hasattr(inverse_op, "torch_matmat"):
        dtype = torch.float32 if np.dtype(inverse_op.dtype) == np.float32 else torch.float64
        return inverse_op.torch_matmat(g.to(inverse_op.device, dtype)).double().cpu()
    return torch.as_tensor(inverse_op @ g.cpu().numpy(), dtype=torch.float64)


def _cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    a, b = a.double().cpu(), b.double().cpu()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))
