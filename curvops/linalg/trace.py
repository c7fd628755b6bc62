"""Stochastic trace and diagonal estimators (Rademacher probes, seeded, batched products).

Probes are drawn on the CPU with a seeded ``torch.Generator`` and moved to the operator's
device, one probe at a time: the estimates do not depend on the device, the rank, or
``chunk`` (how many probes share one matmat). As every algorithm here, they take a real
symmetric operator (a non-symmetric one is refused by ``torch_matmat``: for a curvature
matrix it is a wrong operator) and refuse NaN or inf in a product or an overflowing sum.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from curvops.core.checks import check_count
from curvops.interface import OperatorLike, TorchMatmat, torch_matmat
from curvops.linalg._checks import check_seed
from curvops.linalg._probes import rademacher
from curvops.linalg.results import DiagonalEstimate, TraceEstimate


def _mean_se(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis (float64; NaN error for one sample)."""
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            f"the probes' quadratic forms overflowed in {x.dtype}: use a float64 operator"
        )
    x = x.to(torch.float64)
    n = x.shape[-1]
    se = x.std(dim=-1) / math.sqrt(n) if n > 1 else torch.full(x.shape[:-1], math.nan)
    return x.mean(dim=-1).cpu().numpy(), se.cpu().numpy()


def _probe_products(A: TorchMatmat, n: int, seed: int, chunk: int):
    """Yields (Z, A Z) chunk by chunk for the first n Rademacher probes of ``seed``."""
    for Z in rademacher(A, n, seed, chunk):
        yield Z, A(Z)


def hutchinson_trace(
    op: OperatorLike, n_probes: int = 100, seed: int = 0, chunk: int = 16
) -> TraceEstimate:
    """tr(A) ≈ (1/n) Σ_i z_iᵀ A z_i, z_i Rademacher (P,); ``chunk`` probes per matmat.

    Standard error: sample std of z_iᵀ A z_i over √n.
    """
    _check("n_probes", n_probes, 1, seed, chunk)
    A = torch_matmat(op, algorithm="hutchinson_trace")
    count0 = A.n_matvecs
    quad = torch.cat([(Z * AZ).sum(0) for Z, AZ in _probe_products(A, n_probes, seed, chunk)])
    est, se = _mean_se(quad)
    return TraceEstimate(float(est), float(se), A.n_matvecs - count0, "hutchinson")


def hutchpp_trace(
    op: OperatorLike, n_matvecs: int = 102, seed: int = 0, chunk: int = 16
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021): tr(A) ≈ tr(Qᵀ A Q) + Hutchinson on (I − QQᵀ) A (I − QQᵀ).

    n_matvecs = m is split m//3 sketch columns S (Q = orth(A S)), m//3 for A Q, and the
    remaining m − 2(m//3) Rademacher probes G for the deflated remainder. The standard
    error is that of the remainder's Hutchinson part (the Q part is exact).
    """
    _check("n_matvecs", n_matvecs, 3, seed, chunk)
    A = torch_matmat(op, algorithm="hutchpp_trace")
    count0, s = A.n_matvecs, n_matvecs // 3
    g = n_matvecs - 2 * s
    probes = torch.cat(list(rademacher(A, s + g, seed)), 1)
    S, G = probes[:, :s], probes[:, s:]
    Q = _orth(_chunked(A, S, chunk))
    head = float((Q * _chunked(A, Q, chunk)).to(torch.float64).sum()) if Q.shape[1] else 0.0
    G = G - Q @ (Q.T @ G)
    quad = (G * _chunked(A, G, chunk)).sum(0)
    est, se = _mean_se(quad)
    return TraceEstimate(float(head + est), float(se), A.n_matvecs - count0, "hutch++")


def hutchinson_diagonal(
    op: OperatorLike, n_probes: int = 100, seed: int = 0, chunk: int = 16
) -> DiagonalEstimate:
    """diag(A) ≈ (1/n) Σ_i z_i ⊙ A z_i, z_i Rademacher; per-entry standard errors (P,)."""
    _check("n_probes", n_probes, 1, seed, chunk)
    A = torch_matmat(op, algorithm="hutchinson_diagonal")
    count0 = A.n_matvecs
    samples = torch.cat([Z * AZ for Z, AZ in _probe_products(A, n_probes, seed, chunk)], 1)
    est, se = _mean_se(samples)
    return DiagonalEstimate(est, se, A.n_matvecs - count0)


def _check(name: str, n: int, least: int, seed: int, chunk: int) -> None:
    check_count(name, n, least)
    check_seed(seed)
    check_count("chunk", chunk, 1)


def _chunked(A: TorchMatmat, M: torch.Tensor, chunk: int) -> torch.Tensor:
    if M.shape[1] == 0:
        return M.clone()
    return torch.cat([A(M[:, i : i + chunk]) for i in range(0, M.shape[1], chunk)], 1)


def _orth(Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of range(Y), numerically dependent columns dropped."""
    if Y.shape[1] == 0:
        return Y
    U, s, _ = torch.linalg.svd(Y, full_matrices=False)
    return U[:, s > s.max() * Y.shape[0] * torch.finfo(Y.dtype).eps]
