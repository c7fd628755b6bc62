"""EKFAC's eigenvalue correction E = Σ_{n,k} (Q_Gᵀ g_nk Q_A)² from rotated layer quantities.

bt (K, B, R, D₂): output vectors in the basis of G; at (B, R, D₁): inputs in the basis of A
(R: the positions of all of a layer's uses in the batch, concatenated):
  per-example:  E = Σ_{k,n} (Σ_r bt_knr at_nrᵀ)²                 memory B·D₁·D₂
  Gramian:      E_ij = Σ_n Σ_{s,t} (Σ_k bt_ks,i bt_kt,i)(at_s,j at_t,j)   memory B·R²(D₁ + D₂)
  groups g:     the same per group, bt (K, B, R, g, d₂), at (B, R, g, d₁) -> E (g, d₂, d₁)
  embedding:    Q_A = I and a = one-hot ids: E[:, v] = Σ_{n,k} (Σ_{r: id_nr = v} bt_nrk)²,
                a scatter over the (point, token) pairs present (memory B·R·D, never B·V·D)
  lean (conv):  E = Σ_{k,n} (Q_Gᵀ g_nk Q_A)² with g_nk = Σ_r b aᵀ from patches unfolded
                again per vector, a few points at a time, from the layer's input (which
                autograd keeps anyway): no batch of patches is held (``layers.PATCH_BUDGET``)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from curvops.operators.kronecker.layers import augment, patch_chunks


def rotate(b: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """b @ Q for b (K', B, R, D₂); a conv layer's b is a view of (K', B, D₂, R), rotated in
    that layout (no copy of b, and the result keeps it for the per-example products)."""
    if b.shape[2] > 1 and b.stride(-1) != 1:
        return (Q.T @ b.transpose(-1, -2)).transpose(-1, -2)
    return b @ Q


def rotate_grouped(b: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """b (K', B, R, g·d) in the per-group bases Q (g, d, d) -> (K', B, R, g, d)."""
    K, B, R, D = b.shape
    bg = b.reshape(K, B, R, Q.shape[0], D // Q.shape[0])
    return torch.einsum("kbrgi,gij->kbrgj", bg, Q)


def per_example_correction(bt: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Σ_{k,n} (Σ_r bt_knr atᵀ_nr)² for bt (K, B, R, D₂), at (B, R, D₁) -> (D₂, D₁)."""
    E = bt.new_zeros(bt.shape[3], at.shape[2])
    for bk in bt:  # one (B, D₂, D₁) batch of per-example gradients at a time
        E += (bk.transpose(1, 2) @ at).square().sum(dim=0)
    return E


def grouped_per_example(bt: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """bt (K, B, R, g, d₂), at (B, R, g, d₁) -> E (g, d₂, d₁)."""
    E = bt.new_zeros(bt.shape[3], bt.shape[4], at.shape[3])
    for bk in bt:
        E += torch.einsum("brgi,brgj->bgij", bk, at).square().sum(dim=0)
    return E


def gramian_correction(bt: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The same E through Gramians over positions: Σ_{n,s,t} (Σ_k bt bt)_{nst,i} (at at)_{nst,j}."""
    return gramian_product(gramian_b(bt), at)


def gramian_b(bt: torch.Tensor) -> torch.Tensor:
    """Σ_k bt_ks bt_ktᵀ per example and feature: (K, B, R, D₂) -> (B, R, R, D₂); grouped
    (K, B, R, g, d₂) -> (B, R, R, g, d₂)."""
    if bt.ndim == 5:
        return torch.einsum("knsgi,kntgi->nstgi", bt, bt)
    return torch.einsum("knsi,knti->nsti", bt, bt)


def gramian_product(gb: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """E from gb (B, R, R, D₂) and the rotated inputs at (B, R, D₁): (D₂, D₁); grouped:
    gb (B, R, R, g, d₂), at (B, R, g, d₁) -> (g, d₂, d₁)."""
    if gb.ndim == 5:
        ga = torch.einsum("nsgj,ntgj->nstgj", at, at)
        return torch.einsum("nstgi,nstgj->gij", gb, ga)
    ga = torch.einsum("nsj,ntj->nstj", at, at)  # (B, R, R, D₁)
    return gb.reshape(-1, gb.shape[-1]).T @ ga.reshape(-1, ga.shape[-1])


def embedding_correction(
    bt: torch.Tensor, ids: torch.Tensor, vocab: int, padding_idx: int | None
) -> torch.Tensor:
    """E (D, V) for bt (K, B, R, D) and token ids (B, R): per (point, token) the sum of the
    rotated vectors at its positions, squared, summed over points and vectors."""
    K, B, R, D = bt.shape
    keep = (
        (ids != padding_idx) if padding_idx is not None else torch.ones_like(ids, dtype=torch.bool)
    )
    point = torch.arange(B, device=ids.device).unsqueeze(1).expand(B, R)
    keys = (point * vocab + ids)[keep]  # (M,)
    unique, inverse = torch.unique(keys, return_inverse=True)
    vectors = bt.permute(1, 2, 0, 3)[keep]  # (M, K, D)
    sums = vectors.new_zeros(unique.shape[0], K, D).index_add_(0, inverse, vectors)
    E = bt.new_zeros(D, vocab)
    return E.index_add_(1, unique % vocab, sums.square().sum(1).T)


@dataclass
class LeanInput:
    """A conv use's input x (B, C, *spatial), for ``lean_correction``."""

    x: torch.Tensor
    module: Any
    joint: bool
    groups: int


def lean_correction(b: torch.Tensor, inp: LeanInput, QG: torch.Tensor, QA: torch.Tensor):
    """E (D₂, D₁) ((g, d₂, d₁) grouped) from unrotated b (K, B, R, D₂) and fresh patches:
    Q_Gᵀ (bᵀ a) Q_A = (b Q_G)ᵀ (a Q_A), both sides rotated before the per-example product
    (n R (D₁² + D₂² + D₁ D₂) per chunk of n points instead of n D₁ D₂ (R + D₁ + D₂)); with
    few positions (R² (d₁ + d₂) < d₁ d₂) through the Gramians over positions instead."""
    K, B, R, D2 = b.shape
    g = inp.groups
    E: torch.Tensor | None = None
    for s, a in patch_chunks(inp.module, inp.x):
        n = a.shape[0]
        a = a.reshape(n, R, g, -1) if g > 1 else a
        a = augment(a) if inp.joint else a
        at = a @ QA if g == 1 else torch.einsum("nrgi,gij->nrgj", a, QA)
        part = _lean_chunk(b[:, s : s + n], at, QG, g)
        E = part if E is None else E + part
    assert E is not None
    return E


def _lean_chunk(b: torch.Tensor, at: torch.Tensor, QG: torch.Tensor, g: int) -> torch.Tensor:
    """One chunk's E from b (K, n, R, D₂) and the rotated patches at (n, R, [g,] d₁)."""
    K, n, R, D2 = b.shape
    if R * R * (at.shape[-1] + D2 // g) < at.shape[-1] * (D2 // g):
        if g == 1:
            return gramian_product(gramian_b(rotate(b, QG)), at)
        bt = torch.einsum("knrgi,gij->knrgj", b.reshape(K, n, R, g, D2 // g), QG)
        return gramian_product(gramian_b(bt), at)
    part: torch.Tensor | None = None
    for bk in b:
        if g == 1:
            grad = rotate(bk.unsqueeze(0), QG)[0].transpose(1, 2) @ at  # (n, D₂, D₁)
        else:
            bt = torch.einsum("nrgi,gij->nrgj", bk.reshape(n, R, g, D2 // g), QG)
            grad = torch.einsum("nrgi,nrgj->ngij", bt, at)
        sq = grad.square_().sum(0)
        part = sq if part is None else part + sq
    assert part is not None
    return part


def bias_correction(b: torch.Tensor, Q: torch.Tensor, groups: int) -> torch.Tensor:
    """A separate bias's E (D₂, 1) ((g, d₂, 1)): Σ_{k,n} (Q_Gᵀ Σ_r b_knr)², the positions
    summed before the rotation (no rotated copy of b)."""
    s = b.sum(dim=2)  # (K, B, D₂)
    if groups == 1:
        return (s @ Q).square().sum(dim=(0, 1)).unsqueeze(-1)
    sg = s.reshape(s.shape[0], s.shape[1], groups, -1)
    return torch.einsum("kbgi,gij->kbgj", sg, Q).square().sum(dim=(0, 1)).unsqueeze(-1)
