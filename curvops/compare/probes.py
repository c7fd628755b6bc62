"""Seeded ±1 probes and what the probe route estimates from them, chunk by chunk.

n Rademacher probes z_i (P,) are kept as bits (P x ⌈n/8⌉ bytes) and pass through the
operators c columns at a time, so no (P, n) matrix is ever held. Per probe:
  tr M = E zᵀMz,   ‖M‖²_F = E ‖Mz‖²                      (Hutchinson)
and per block b (index set of the exact order), ``Estimator``:
  "direct":     ‖M_bb‖²_F = E ‖(Mz)_b‖²   when M = A − B is block-diagonal over the blocks
                (every operator's products keep to them);
  "pairs":      ‖M_bb‖²_F = E[m_ij m_ji], m_ij = z_{i,b}ᵀ (M z_j)_b, i ≠ j independent: a
                U-statistic over the n(n−1) ordered pairs of the SAME products (no extra
                product; the cross-block terms of M cancel in expectation, not per sample);
  "restricted": ‖M_bb‖²_F = E ‖(M z_b)_b‖², z_b zero outside b: extra products, one per
                block and probe (``block_probes``), exact where M_bb = 0.
Standard errors: the delta method for ratios of means, the jackknife over probes for pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from curvops.interface import TorchMatmat

ROWS = 2**20  # rows of the probes unpacked at once for the pair statistics
CHUNK_BYTES = 2**25  # one (P, c) block of probes or products: c = ⌊CHUNK_BYTES / (P · 4)⌋


def chunk_columns(P: int, n: int) -> int:
    """Probe columns per product: 1 <= c <= n, a (P, c) float32 block within CHUNK_BYTES."""
    return max(1, min(n, CHUNK_BYTES // (4 * P)))


class Probes:
    """n seeded Rademacher probes of length P, stored as bits on ``device``."""

    def __init__(self, P: int, n: int, seed: int, device: torch.device) -> None:
        self.P, self.n = P, n
        gen = torch.Generator().manual_seed(seed)
        words = (n + 7) // 8
        weights = (2 ** torch.arange(8, dtype=torch.int32)).repeat(words)[: words * 8]
        bits = torch.empty(P, words, dtype=torch.uint8)
        for lo in range(0, P, ROWS):
            b = torch.randint(0, 2, (min(ROWS, P - lo), n), generator=gen, dtype=torch.int32)
            b = torch.nn.functional.pad(b, (0, words * 8 - n)) * weights
            bits[lo : lo + ROWS] = b.view(-1, words, 8).sum(2).to(torch.uint8)
        self.bits = bits.to(device)

    def rows(self, index: torch.Tensor | slice, cols: slice, dtype: torch.dtype) -> torch.Tensor:
        """Z[index, cols] as ±1 in ``dtype``."""
        j = torch.arange(self.n, device=self.bits.device)[cols]
        words = self.bits[index][:, j // 8].to(torch.int32)
        return ((words >> (j % 8)) & 1).to(dtype) * 2 - 1

    def columns(self, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
        """Z[:, lo:hi] (P, hi − lo)."""
        return self.rows(slice(None), slice(lo, hi), dtype)


def block_grams(Z: Probes, index: torch.Tensor, Xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Z_bᵀ X_b (n, c) in float64 for each X (P, c) of ``Xs``, over the rows ``index``; the
    probes' rows are unpacked once, ROWS at a time."""
    out = [torch.zeros(Z.n, X.shape[1], dtype=torch.float64, device=X.device) for X in Xs]
    for lo in range(0, len(index), ROWS):
        rows = index[lo : lo + ROWS]
        Zb = Z.rows(rows, slice(None), Xs[0].dtype).T
        for acc, X in zip(out, Xs):
            acc += (Zb @ X[rows]).to(torch.float64)
    return out


def pair_estimate(M: torch.Tensor) -> tuple[float, np.ndarray]:
    """θ = Σ_{i≠j} m_ij m_ji / (n(n−1)) for M (n, n), and its n leave-one-out values."""
    Q = (M * M.T).cpu().numpy()
    n = Q.shape[0]
    np.fill_diagonal(Q, 0.0)
    total, rows = Q.sum(), Q.sum(1)
    theta = total / (n * (n - 1)) if n > 1 else math.nan
    loo = (total - 2 * rows) / ((n - 1) * (n - 2)) if n > 2 else np.full(n, theta)
    return float(theta), loo


def jackknife_se(loo: np.ndarray) -> float:
    """The jackknife standard error of an estimate from its n leave-one-out values."""
    n = len(loo)
    return math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum())) if n > 2 else 0.0


def jackknife_ratio(
    num: tuple[float, np.ndarray], den: tuple[float, np.ndarray]
) -> tuple[float, float]:
    """√R for R = θ_num / θ_den (a negative estimate counts as 0) and its standard error
    √(R + s_R) − √R, s_R R's jackknife error (≈ s_R / 2√R, the delta method, when R ≫ s_R;
    √s_R when R ≈ 0)."""
    (a, a_loo), (b, b_loo) = num, den
    if not b > 0:
        return math.nan, 0.0
    R, loo = a / b, a_loo / np.where(b_loo > 0, b_loo, np.nan)
    n = len(loo)
    s_R = math.sqrt((n - 1) / n * float(np.nansum((loo - np.nanmean(loo)) ** 2))) if n > 2 else 0.0
    value = math.sqrt(max(R, 0.0))
    return value, math.sqrt(max(R + s_R, 0.0)) - value


def mean_se(samples: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean."""
    s = samples.double()
    return float(s.mean()), float(s.std() / len(s) ** 0.5) if len(s) > 1 else 0.0


def ratio_sqrt(num: torch.Tensor, den: torch.Tensor) -> tuple[float, float]:
    """sqrt(mean num / mean den) and its standard error (delta method); NaN if den is 0."""
    num, den = num.double(), den.double()
    if float(den.mean()) == 0:
        return math.nan, 0.0
    n, R = len(num), float(num.mean() / den.mean())
    resid = num - R * den
    se_R = float(resid.std() / (den.mean() * n**0.5)) if n > 1 else 0.0
    root = R**0.5
    return root, se_R / (2 * root) if root > 0 else 0.0


class Sums:
    """Per-probe statistics of one operator M against the probes: zᵀMz, ‖Mz‖², and per
    block ‖(Mz)_b‖² (direct) and the pair matrix G_b = Z_bᵀ (M Z)_b (n, n)."""

    def __init__(self, n: int, n_blocks: int, pairs: bool) -> None:
        self.quad = torch.zeros(n, dtype=torch.float64)
        self.sq = torch.zeros(n, dtype=torch.float64)
        self.block_sq = torch.zeros(n_blocks, n, dtype=torch.float64)
        self.gram = torch.zeros(n_blocks, n, n, dtype=torch.float64) if pairs else None

    def block(self, b: int, how: str) -> tuple[float, np.ndarray]:
        """‖M_bb‖²_F by "direct" or "pairs", with its leave-one-out values."""
        if how == "pairs":
            assert self.gram is not None
            return pair_estimate(self.gram[b])
        x = self.block_sq[b].numpy()
        n = len(x)
        loo = (x.sum() - x) / (n - 1) if n > 1 else x.copy()
        return float(x.mean()), loo


def accumulate(
    Z: Probes,
    lo: int,
    Zc: torch.Tensor,
    products: list[torch.Tensor],
    sums: list[Sums],
    blocks: Sequence[Any],
) -> None:
    """Add the probes lo .. lo + c (Zc (P, c)) and products M Zc (P, c), one per Sums."""
    hi = lo + Zc.shape[1]
    for MZ, acc in zip(products, sums):
        acc.quad[lo:hi] = (Zc * MZ).double().sum(0).cpu()
        acc.sq[lo:hi] = (MZ.double() ** 2).sum(0).cpu()
        for b, index in enumerate(blocks):
            acc.block_sq[b, lo:hi] = (MZ[index].double() ** 2).sum(0).cpu()
    if not any(acc.gram is not None for acc in sums):
        return
    for b, index in enumerate(blocks):
        for acc, G in zip(sums, block_grams(Z, index, products)):
            if acc.gram is not None:
                acc.gram[b, :, lo:hi] = G.cpu()


def apply(mm: TorchMatmat, Z: torch.Tensor) -> torch.Tensor:
    """mm(Z) on mm's device and dtype, returned on Z's."""
    return mm(Z.to(mm.device, mm.dtype)).to(Z)
