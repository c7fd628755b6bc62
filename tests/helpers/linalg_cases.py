"""Matrices of known spectrum and a minimal torch operator, shared by the linalg tests."""

from __future__ import annotations

import numpy as np
import torch


def with_spectrum(d, seed: int = 0) -> np.ndarray:
    """Q diag(d) Qᵀ (float64) with a seeded random orthogonal Q."""
    d = np.asarray(d, dtype=np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d.size, d.size)))
    D = (Q * d) @ Q.T
    return (D + D.T) / 2


def indefinite_spectrum(P: int = 150, seed: int = 0) -> np.ndarray:
    """Well separated top (30 .. 8) and bottom (−20 .. −12) ends around a bulk in [−2, 2]."""
    rng = np.random.default_rng(seed)
    top = np.linspace(30, 8, 12)
    bottom = np.linspace(-20, -12, 5)
    return np.concatenate([top, bottom, rng.uniform(-2, 2, P - 17)])


def reference_hessian() -> np.ndarray:
    """DESIGN §4: W = [[2,3],[4,1]], v = [2,1], x = [1,1], y = 14, MSE, one point.

    f = vᵀWx = 15, r = f − y = 1, L = r²: H = 2 g gᵀ + 2 r ∂²f with
    g = ∇f = [v ⊗ x, Wx] = [2, 2, 1, 1, 5, 5] and ∂²f/∂W_ij∂v_i = x_j = 1.
    """
    g = np.array([2.0, 2, 1, 1, 5, 5])
    C = np.zeros((6, 6))
    for i in range(2):
        for j in range(2):
            C[2 * i + j, 4 + i] = C[4 + i, 2 * i + j] = 1.0
    return 2 * np.outer(g, g) + 2 * 1.0 * C


class TorchOp:
    """The smallest operator of the torch fast path: torch_matmat, device, dtype, shape."""

    def __init__(self, D, dtype=torch.float64, block_slices=None, block_names=None):
        self.D = torch.as_tensor(np.asarray(D), dtype=dtype)
        self.shape = tuple(self.D.shape)
        self.dtype = np.dtype(str(dtype).removeprefix("torch."))
        self.device = torch.device("cpu")
        if block_slices is not None:
            self.block_slices = block_slices
            self.block_names = block_names or [f"b{i}" for i in range(len(block_slices))]

    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        return self.D @ M.to(self.D.dtype)


def block_diagonal(blocks) -> tuple[np.ndarray, list[slice]]:
    """The block-diagonal matrix of ``blocks`` and the slice of each."""
    sizes = [b.shape[0] for b in blocks]
    edges = np.cumsum([0, *sizes])
    D = np.zeros((edges[-1], edges[-1]))
    slices = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    for s, b in zip(slices, blocks):
        D[s, s] = b
    return D, slices


class one_torch_thread:
    """Context manager: torch on one thread (see conftest.py), restored on exit."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
