"""Per-layer top eigenvalues λ_max(A_bb) of a block-diagonal operator, all blocks at once.

A block-diagonal A maps a vector [v_1; ...; v_L] to [A_11 v_1; ...; A_LL v_L], so one
product serves a solve on every block: each block runs its own single-vector LOBPCG
(Rayleigh–Ritz on [x_b, w_b, p_b]: iterate, residual, previous direction; 3 x 3, float64)
and the blocks share the products, one column per iteration (the blocks that converged
contribute zeros). Warm-started from the previous measurement's block vectors.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from curvops.interface import OperatorLike, TorchMatmat, torch_matmat
from curvops.linalg import ConvergenceWarning

ZERO_RTOL = 1e-12  # |λ_b| <= ZERO_RTOL · max_c |λ_c| counts as zero (as block_top_eigenvalues)


@dataclass
class LayerResult:
    """Per block: ``names``, ``eigenvalues`` λ_max(A_bb), ``scores`` |λ_b| / max_c |λ_c|
    (NaN for a zero block), ``statuses`` "ok" | "zero", ``converged``, and the unit
    ``vectors`` (one tensor (n_b,) per block, the next warm start); ``n_matvecs``, ``seconds``."""

    names: list[str]
    eigenvalues: np.ndarray
    scores: np.ndarray
    statuses: list[str]
    converged: np.ndarray
    vectors: list[torch.Tensor]
    n_matvecs: int
    seconds: float


class _Block:
    """One block's LOBPCG state: x, A x, p, A p (all (n_b,)), θ and the ‖A_bb‖ estimate."""

    def __init__(self, x: torch.Tensor, ax: torch.Tensor) -> None:
        self.x, self.ax = x, ax
        self.p: torch.Tensor | None = None
        self.ap: torch.Tensor | None = None
        self.theta = float(x @ ax)
        self.anorm = abs(self.theta)

    def residual(self) -> torch.Tensor:
        return self.ax - self.theta * self.x

    def converged(self, tol: float) -> bool:
        return float(self.residual().norm()) <= tol * max(self.anorm, np.finfo(float).tiny)

    def direction(self) -> torch.Tensor | None:
        """The residual orthogonalised against x and p (twice), unit; None if it vanishes."""
        r = w = self.residual()
        for _ in range(2):
            for q in (self.x, self.p):
                if q is not None:
                    w = w - q * (q @ w)
        n, floor = float(w.norm()), float(r.norm()) * torch.finfo(w.dtype).eps ** 0.5
        return None if n <= floor or n == 0.0 else w / n

    def update(self, w: torch.Tensor, aw: torch.Tensor) -> None:
        """Rayleigh–Ritz on [x, w, p]; the new p from the non-x coefficients (orthogonal to x)."""
        cols = [self.x, w] + ([self.p] if self.p is not None else [])
        acols = [self.ax, aw] + ([self.ap] if self.ap is not None else [])
        S, AS = torch.stack(cols, 1), torch.stack(acols, 1)
        G = (S.T @ S).double()
        d, U = torch.linalg.eigh((G + G.T) / 2)
        keep = d > d.max() * 1e-10
        T = U[:, keep] / d[keep].sqrt()
        H = T.T @ (S.T @ AS).double() @ T
        vals, C = torch.linalg.eigh((H + H.T) / 2)
        self.anorm = max(self.anorm, float(vals.abs().max()))
        y = T @ C[:, -1]
        z = y.clone()
        z[0] = 0
        z = z - y * (y @ G @ z) / (y @ G @ y)
        zn = float(torch.sqrt((z @ G @ z).clamp_min(0)))
        yd = y.to(S.dtype)
        x, ax = S @ yd, AS @ yd
        n = x.norm()
        self.x, self.ax = x / n, ax / n
        self.theta = float(self.x @ self.ax)  # the Rayleigh quotient of the stored x
        self.p = self.ap = None
        if zn > 1e-12:
            zd = (z / zn).to(S.dtype)
            self.p, self.ap = S @ zd, AS @ zd


def layer_top_eigenvalues(
    op: OperatorLike,
    previous: list[torch.Tensor] | None = None,
    tol: float = 1e-4,
    max_iter: int = 300,
    seed: int = 0,
) -> LayerResult:
    """λ_max of each diagonal block of ``op`` (with ``block_slices``), warm from ``previous``.

    A block is converged when ‖A_bb x − θ x‖ <= tol · ‖A_bb‖ (‖A_bb‖ estimated by the
    largest |Ritz value| of the block seen). One product per iteration for all blocks;
    ``max_iter`` iterations at most (then a ConvergenceWarning). ``op`` must be
    block-diagonal (a curvops operator built with ``blocks="layer"``).
    """
    slices = list(getattr(op, "block_slices", None) or [])
    if not slices:
        raise ValueError("layer_top_eigenvalues needs an operator with blocks (blocks='layer')")
    names = list(getattr(op, "block_names", None) or map(str, range(len(slices))))
    A = torch_matmat(op, algorithm="layer_top_eigenvalues")
    count0, start = A.n_matvecs, time.perf_counter()
    X = _start(A, slices, previous, seed)
    AX = A(X[:, None])[:, 0]
    blocks = [_Block(X[s], AX[s]) for s in slices]
    for _ in range(max_iter):
        if not _iterate(A, blocks, slices, tol):
            break
    converged = np.array([b.converged(tol) for b in blocks])
    if not converged.all():
        warnings.warn(
            f"layer_top_eigenvalues: {int((~converged).sum())} of {len(blocks)} blocks did not "
            f"converge to tol={tol:g} in {max_iter} iterations",
            ConvergenceWarning,
            stacklevel=2,
        )
    values = np.array([b.theta for b in blocks])
    statuses, scores = _scores(values)
    return LayerResult(
        names=names,
        eigenvalues=values,
        scores=scores,
        statuses=statuses,
        converged=converged,
        vectors=[b.x.detach().clone() for b in blocks],
        n_matvecs=A.n_matvecs - count0,
        seconds=time.perf_counter() - start,
    )


def _start(A: TorchMatmat, slices, previous, seed: int) -> torch.Tensor:
    """The packed start [x_1; ...; x_L], each block unit: the previous vectors or Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(A.size, generator=gen, dtype=torch.float64).to(A.device, A.dtype)
    if previous is not None:
        if len(previous) != len(slices):
            raise ValueError(f"previous has {len(previous)} vectors for {len(slices)} blocks")
        for s, v in zip(slices, previous):
            X[s] = torch.as_tensor(v, dtype=A.dtype, device=A.device)
    for s in slices:
        X[s] = X[s] / X[s].norm().clamp_min(torch.finfo(A.dtype).tiny)
    return X


def _iterate(A: TorchMatmat, blocks: list[_Block], slices, tol: float) -> bool:
    """One LOBPCG step on every unconverged block, sharing one product; False if none moved."""
    W = torch.zeros(A.size, dtype=A.dtype, device=A.device)
    moving = []
    for i, (b, s) in enumerate(zip(blocks, slices)):
        w = None if b.converged(tol) else b.direction()
        if w is not None:
            W[s] = w
            moving.append(i)
    if not moving:
        return False
    AW = A(W[:, None])[:, 0]
    for i in moving:
        s = slices[i]
        blocks[i].update(W[s], AW[s])
    return True


def _scores(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """ "ok" | "zero" per block and |λ_b| / max over "ok" blocks (NaN where zero)."""
    scale = np.abs(values).max(initial=0.0)
    zero = np.abs(values) <= ZERO_RTOL * scale
    scores = np.where(zero, np.nan, np.abs(values))
    if (~zero).any():
        scores = scores / np.nanmax(scores)
    return ["zero" if z else "ok" for z in zero], scores
