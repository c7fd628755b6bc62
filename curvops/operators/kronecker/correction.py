"""EKFAC's eigenvalue correction E = Σ_{n,k} (Q_Gᵀ g_nk Q_A)² from rotated layer quantities.

bt (K, B, R, D₂): output vectors in the basis of G; at (B, R, D₁): inputs in the basis of A.
  per-example:  E = Σ_{k,n} (Σ_r bt_knr at_nrᵀ)²                 memory B·D₁·D₂
  Gramian:      E_ij = Σ_n Σ_{s,t} (Σ_k bt_ks,i bt_kt,i)(at_s,j at_t,j)   memory B·R²(D₁ + D₂)
"""

from __future__ import annotations

import torch


def rotate(b: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """b @ Q for b (K', B, R, D₂); a conv layer's b is a view of (K', B, D₂, R), rotated in
    that layout (no copy of b, and the result keeps it for the per-example products)."""
    if b.shape[2] > 1 and b.stride(-1) != 1:
        return (Q.T @ b.transpose(-1, -2)).transpose(-1, -2)
    return b @ Q


def per_example_correction(bt: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Σ_{k,n} (Σ_r bt_knr atᵀ_nr)² for bt (K, B, R, D₂), at (B, R, D₁) -> (D₂, D₁)."""
    E = bt.new_zeros(bt.shape[3], at.shape[2])
    for bk in bt:  # one (B, D₂, D₁) batch of per-example gradients at a time
        E += (bk.transpose(1, 2) @ at).square().sum(dim=0)
    return E


def gramian_correction(bt: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The same E through Gramians over positions: Σ_{n,s,t} (Σ_k bt bt)_{nst,i} (at at)_{nst,j}."""
    return gramian_product(gramian_b(bt), at)


def gramian_b(bt: torch.Tensor) -> torch.Tensor:
    """Σ_k bt_ks bt_ktᵀ per example and feature: (K, B, R, D₂) -> (B, R, R, D₂)."""
    return torch.einsum("knsi,knti->nsti", bt, bt)


def gramian_product(gb: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """E from gb (B, R, R, D₂) and the rotated inputs at (B, R, D₁): (D₂, D₁)."""
    ga = torch.einsum("nsj,ntj->nstj", at, at)  # (B, R, R, D₁)
    return gb.reshape(-1, gb.shape[-1]).T @ ga.reshape(-1, ga.shape[-1])
