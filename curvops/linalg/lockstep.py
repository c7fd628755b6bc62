"""Lock-step Lanczos over the diagonal blocks of a block-diagonal operator.

One product advances every block: the P-vector multiplied holds, in each unfinished block's
slice, that block's current Lanczos vector (large blocks) or its next identity column
(blocks of at most ``DENSE_MAX`` entries, solved densely), so for A = diag(A_bb) one product
gives every A_bb v_b. Per large block: classical Gram–Schmidt twice against its own basis,
its own projected matrix T_b = V_bᵀ A_bb V_b and thick restarts (Wu & Simon), exactly as
``lanczos.thick_restart_lanczos`` does for one operator. A block stops (zero in later
products) once λ_max and the eigenvalue of largest |λ| both have Ritz residuals
β |s_i| <= tol · ‖A_bb‖ (‖A_bb‖ estimated by the largest |Ritz value| seen), checked after
every step. Cost: as many products as the slowest block needs, at least the size of the
largest dense block; memory: ncv + 1 vectors of P, as one ``eigsh(k=1)``.
"""

from __future__ import annotations

import numpy as np
import torch

from curvops.core.errors import NotSymmetricError
from curvops.interface import PROBE_SEED, SYMMETRY_EPS, TorchMatmat
from curvops.linalg.lanczos import select

DENSE_MAX = 32  # blocks up to this size: dense eigh of the block (its identity columns)
Outcome = tuple[float, float, bool] | str  # (λ of largest |λ|, λ_max, converged) or an error


def dense_values(
    D: torch.Tensor, symmetric: bool, dtype: torch.dtype, label: str
) -> tuple[float, float, bool]:
    """(λ of largest |λ|, λ_max, True) of a dense block D (n, n) computed in ``dtype``,
    checked symmetric to round-off unless ``symmetric`` (by construction)."""
    D = D.to(torch.float64)
    if not symmetric:
        gap, scale = float((D - D.T).abs().max()), float(D.abs().max())
        if gap > SYMMETRY_EPS * torch.finfo(dtype).eps * scale:
            raise NotSymmetricError(
                f"the operator is not symmetric ({label}): max |A_bb − A_bbᵀ| = {gap:.3g} "
                f"for max |A_bb| = {scale:.3g}; block_top_eigenvalues needs a symmetric "
                "operator: pass its symmetric part (A + Aᵀ)/2"
            )
    lo, hi = (float(x) for x in torch.linalg.eigvalsh((D + D.T) / 2)[[0, -1]])
    return (hi if abs(hi) >= abs(lo) else lo), hi, True


def lockstep_extremes(
    A: TorchMatmat, slices: list[slice], tol: float, ncv: int = 20, max_cycles: int = 300
) -> list[Outcome]:
    """Per block (λ of largest |λ|, λ_max, converged), or a message when its slice of a
    product held NaN / inf; A must be block-diagonal over ``slices``."""
    small = [i for i, s in enumerate(slices) if s.stop - s.start <= DENSE_MAX]
    large = [i for i, s in enumerate(slices) if s.stop - s.start > DENSE_MAX]
    dense = DenseColumns(A, [slices[i] for i in small])
    krylov = BlockLanczos(A, [slices[i] for i in large], tol, ncv, max_cycles) if large else None
    if krylov is not None and not A.symmetric:
        probe_block_symmetry(A, [slices[i] for i in large])
    while dense.pending() or (krylov is not None and krylov.pending()):
        x = torch.zeros(A.size, 1, dtype=A.dtype, device=A.device)
        dense.fill(x[:, 0])
        if krylov is not None:
            krylov.fill(x[:, 0])
        y = _product(A, x)[:, 0]
        dense.take(y)
        if krylov is not None:
            krylov.take(y, A.n_calls)
    out: list[Outcome] = [""] * len(slices)
    for i, r in zip(small, dense.outcomes()):
        out[i] = r
    for i, r in zip(large, krylov.outcomes() if krylov is not None else []):
        out[i] = r
    return out


def _product(A: TorchMatmat, x: torch.Tensor) -> torch.Tensor:
    """A x (P, 1), counted; finiteness is checked per block by the caller."""
    A.n_matvecs += 1
    A.n_calls += 1
    y = A.fn(x)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
        raise ValueError(
            f"product {A.n_calls} of the operator ({A.label}) returned "
            f"{getattr(y, 'shape', type(y).__name__)}, expected a tensor of shape {tuple(x.shape)}"
        )
    return y.to(A.dtype)


def probe_block_symmetry(A: TorchMatmat, slices: list[slice]) -> None:
    """Refuse a non-symmetric block: |u_bᵀ(A v)_b − v_bᵀ(A u)_b| within ``SYMMETRY_EPS``
    machine epsilons of ‖(A u)_b‖‖v_b‖ + ‖(A v)_b‖‖u_b‖, for two seeded vectors u, v and
    every block at once (one product of 2 columns, not counted)."""
    gen = torch.Generator(device="cpu").manual_seed(PROBE_SEED)
    UV = torch.randn(A.size, 2, generator=gen, dtype=torch.float64).to(A.device, A.dtype)
    AUV = A.fn(UV).to(torch.float64)
    A.n_calls += 1
    UV = UV.to(torch.float64)
    tol = SYMMETRY_EPS * torch.finfo(A.dtype).eps
    for i, s in enumerate(slices):
        (U, V), (AU, AV) = UV[s].T, AUV[s].T
        gap = float(U @ AV - V @ AU)
        scale = float(AU.norm() * V.norm() + AV.norm() * U.norm())
        if abs(gap) > tol * scale:
            raise NotSymmetricError(
                f"the operator is not symmetric ({A.label}, block {i}): uᵀ(A v) − vᵀ(A u) = "
                f"{gap:.3g} on the block, {abs(gap) / scale:.2g} of ‖A u‖‖v‖ + ‖A v‖‖u‖ "
                f"(round-off allows {tol:.1g}); block_top_eigenvalues needs a symmetric "
                "operator: pass its symmetric part (A + Aᵀ)/2"
            )


class DenseColumns:
    """The small blocks' dense matrices, column j of every one of them in product j."""

    def __init__(self, A: TorchMatmat, slices: list[slice]) -> None:
        self.A, self.slices, self.j = A, slices, 0
        self.D = [torch.zeros(s.stop - s.start, s.stop - s.start, dtype=A.dtype) for s in slices]
        self.size = max((s.stop - s.start for s in slices), default=0)

    def pending(self) -> bool:
        return self.j < self.size

    def fill(self, x: torch.Tensor) -> None:
        for s in self.slices:
            if self.j < s.stop - s.start:
                x[s.start + self.j] = 1

    def take(self, y: torch.Tensor) -> None:
        if not self.pending():
            return
        for s, D in zip(self.slices, self.D):
            if self.j < s.stop - s.start:
                D[:, self.j] = y[s].cpu()
        self.j += 1

    def outcomes(self) -> list[Outcome]:
        out: list[Outcome] = []
        for D in self.D:
            if not bool(torch.isfinite(D).all()):
                out.append(f"NaN or inf in the products of the operator ({self.A.label})")
                continue
            out.append(dense_values(D, self.A.symmetric, self.A.dtype, self.A.label))
        return out


class BlockLanczos:
    """Thick-restart Lanczos bases of the large blocks, all advanced by the same products.

    V (m+1, Q) holds every block's basis in its own columns (Q = Σ_b n_b, block b at
    ``cols[b]``); T (n_blocks, m+1, m+1) float64 their projected matrices. Start vectors:
    per block the seed-0 Gaussian of ``eigsh`` (the same Krylov spaces as one eigsh per
    block, in exact arithmetic).
    """

    def __init__(
        self, A: TorchMatmat, slices: list[slice], tol: float, ncv: int, max_cycles: int
    ) -> None:
        self.A, self.tol, self.max_cycles = A, tol, max_cycles
        sizes = [s.stop - s.start for s in slices]
        self.m = min(ncv, min(sizes) - 1)
        self.keep = min(1 + (self.m - 1) // 2, self.m - 1)
        n, dev = len(slices), A.device
        self.index = torch.cat([torch.arange(s.start, s.stop) for s in slices]).to(dev)
        self.seg = torch.repeat_interleave(torch.arange(n), torch.tensor(sizes)).to(dev)
        edges = np.cumsum([0, *sizes])
        self.cols = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        self.V = torch.zeros(self.m + 1, int(edges[-1]), dtype=A.dtype, device=dev)
        for c, size in zip(self.cols, sizes):
            g = torch.Generator(device="cpu").manual_seed(0)
            v = torch.randn(size, 1, generator=g, dtype=torch.float64)[:, 0]
            self.V[0, c] = (v / v.norm()).to(dev, A.dtype)
        self.T = torch.zeros(n, self.m + 1, self.m + 1, dtype=torch.float64, device=dev)
        self.live = np.ones(n, dtype=bool)
        self.anorm = np.full(n, np.finfo(float).tiny)
        self.scale = torch.zeros(n, dtype=torch.float64, device=dev)
        self.j, self.cycle = 0, 0
        self.ritz: list = [None] * n  # per block: (θ, S, β) of its last check
        self.out: list[Outcome | None] = [None] * n

    def pending(self) -> bool:
        return bool(self.live.any())

    def _mask(self) -> torch.Tensor:
        return torch.as_tensor(self.live, device=self.V.device)[self.seg].to(self.V.dtype)

    def fill(self, x: torch.Tensor) -> None:
        if self.pending():
            x[self.index] = self.V[self.j] * self._mask()

    def take(self, y: torch.Tensor, call: int) -> None:
        """One Lanczos step of every live block from its slice of the product ``y``."""
        if not self.pending():
            return
        w = y[self.index] * self._mask()
        self._drop_non_finite(w, call)
        w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
        j = self.j
        w, h = self._project(w, j + 1)
        self.T[:, : j + 1, j] = h
        self.T[:, j, : j + 1] = h
        beta = self._segment_sum((w * w).unsqueeze(0))[0].sqrt().to(torch.float64)
        self.scale = torch.maximum(self.scale, torch.maximum(h.abs().amax(dim=1), beta))
        live = torch.as_tensor(self.live, device=w.device)
        bad = live & (beta <= 100 * torch.finfo(self.A.dtype).eps * self.scale)
        if bool(bad.any()):
            fresh = self._fresh(j + 1)
            w = torch.where(bad[self.seg], fresh, w)
            beta = torch.where(bad, torch.zeros_like(beta), beta)
        norm = torch.where(bad | (beta == 0), torch.ones_like(beta), beta)
        self.V[j + 1] = w / norm.to(w.dtype)[self.seg]
        self.T[:, j + 1, j] = self.T[:, j, j + 1] = beta
        self.j += 1
        self._check()
        if self.j == self.m and self.pending():
            self._restart()

    def _segment_sum(self, X: torch.Tensor) -> torch.Tensor:
        """(r, Q) -> (r, n_blocks): the sum of each block's columns."""
        out = X.new_zeros(X.shape[0], len(self.cols))
        return out.index_add_(1, self.seg, X)

    def _project(self, w: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """w minus its components on each live block's V[:n], twice (classical Gram–Schmidt);
        returns (w, h (n_blocks, n) float64)."""
        Vn, w = self.V[:n], w.clone()
        h = torch.zeros(len(self.cols), n, dtype=torch.float64, device=w.device)
        for _ in range(2):
            for b in np.flatnonzero(self.live):
                c = self.cols[b]
                hb = Vn[:, c] @ w[c]
                w[c] -= hb @ Vn[:, c]
                h[b] += hb.to(torch.float64)
        return w, h

    def _fresh(self, n: int) -> torch.Tensor:
        """A seeded unit vector per block, orthogonal to its V[:n] (after a breakdown)."""
        g = torch.Generator(device="cpu").manual_seed(7919 * (n + self.cycle * self.m))
        w = torch.randn(self.V.shape[1], generator=g, dtype=torch.float64).to(self.V)
        w, _ = self._project(w, n)
        norms = self._segment_sum((w * w).unsqueeze(0))[0].sqrt()
        return w / norms.clamp_min(torch.finfo(w.dtype).tiny)[self.seg]

    def _drop_non_finite(self, w: torch.Tensor, call: int) -> None:
        bad = self._segment_sum((~torch.isfinite(w)).to(w.dtype).unsqueeze(0))[0] > 0
        for b in np.flatnonzero(bad.cpu().numpy() & self.live):
            self.out[b] = f"NaN or inf in product {call} of the operator ({self.A.label})"
            self.live[b] = False

    def _check(self) -> None:
        """Ritz pairs of every live block; a block whose two wanted pairs converged stops."""
        n = self.j
        T = self.T[:, : n + 1, : n + 1].cpu().numpy()
        blocks = np.flatnonzero(self.live)
        if not len(blocks):
            return
        Tn = T[blocks, :n, :n]
        theta, S = np.linalg.eigh((Tn + Tn.transpose(0, 2, 1)) / 2)
        for b, th, Sb in zip(blocks, theta, S):
            beta = float(T[b, n, n - 1])
            self.ritz[b] = (th, Sb, beta)
            self.anorm[b] = max(self.anorm[b], float(np.abs(th).max()))
            lm, la = int(np.argmax(np.abs(th))), int(np.argmax(th))
            residual = np.abs(beta * Sb[n - 1, [lm, la]])
            done = bool((residual <= self.tol * self.anorm[b]).all())
            if done or (self.cycle == self.max_cycles - 1 and n == self.m):
                self.out[b] = (float(th[lm]), float(th[la]), done)
                self.live[b] = False

    def _restart(self) -> None:
        """Keep each live block's ``keep`` best Ritz vectors (both ends while its largest
        |λ| is negative, else the top) and the last Lanczos vector; T becomes arrowhead."""
        m, k = self.m, self.keep
        for b in np.flatnonzero(self.live):
            theta, S, beta = self.ritz[b]
            which = "LA" if theta[np.argmax(np.abs(theta))] >= 0 else "BE"
            idx = select(theta, k, which)
            c = self.cols[b]
            Sk = torch.as_tensor(S[:, idx], dtype=self.V.dtype, device=self.V.device)
            self.V[:k, c] = (self.V[:m, c].T @ Sk).T
            self.V[k, c] = self.V[m, c]
            self.V[k + 1 :, c] = 0
            self.T[b].zero_()
            diag = torch.arange(k, device=self.T.device)
            self.T[b, diag, diag] = torch.as_tensor(theta[idx], device=self.T.device)
            coupling = torch.as_tensor(beta * S[m - 1, idx], device=self.T.device)
            self.T[b, k, :k] = self.T[b, :k, k] = coupling
        self.j, self.cycle = k, self.cycle + 1

    def outcomes(self) -> list[Outcome]:
        return [o if o is not None else "not solved" for o in self.out]
