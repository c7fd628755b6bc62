"""KFAC's factor sums per layer, over its uses (calls) and the data.

Per use u of a layer, inputs a (B, R, D₁) and output vectors b (K, B, R, D₂ᵤ) on the rows
it touches (all of them, or a row slice of a packed weight):
  expand:  A = 1/(Σ_u N R_u) Σ_{u,n,r} a aᵀ,     G[rows_u] += Σ_{n,r,k} b bᵀ
  reduce:  a, b first averaged / summed over the positions of each use
  groups:  A_g, G_g from the channels of group g (a grouped convolution); G_g ⊗ A_g
  embedding: A = diag(Σ token counts) / (N R) (one-hot inputs; padding tokens count as 0),
           "expand" in both settings (averaging one-hot vectors would make A dense)
  forward-only: G = I (diagonal ones), no output vectors.
"""

from __future__ import annotations

import torch

from curvops.operators.kronecker.hooks import Use
from curvops.operators.kronecker.layers import CONVS, augment, one_hot_counts, patch_chunks
from curvops.operators.kronecker.tying import Layer


class LayerSums:
    """Running Σ b bᵀ, Σ a aᵀ (or token counts) and the position count of one layer."""

    def __init__(self, layer: Layer, like: torch.Tensor, forward_only: bool) -> None:
        self.layer, self.forward_only = layer, forward_only
        g, D2 = layer.groups, layer.out_dim
        d2 = D2 // g
        if forward_only:
            self.G = like.new_ones(D2) if g == 1 else like.new_ones(g, d2)
        else:
            self.G = like.new_zeros(D2, D2) if g == 1 else like.new_zeros(g, d2, d2)
        self.A: torch.Tensor | None = None
        if layer.weight_param is not None:
            D1 = layer.in_dim
            if layer.embedding:
                self.A = like.new_zeros(D1)
            else:
                self.A = like.new_zeros(D1, D1) if g == 1 else like.new_zeros(g, D1, D1)
        self.count = 0

    def tensors(self) -> list[torch.Tensor]:
        """[G, A (if any), count] for one all-reduce."""
        count = self.G.new_tensor(float(self.count))
        return [self.G, count] if self.A is None else [self.G, self.A, count]

    def add_inputs(self, use: Use, approx: str) -> None:
        """One use's inputs a (B, R, D₁) (ids (B, R)) into Σ a aᵀ and the count; a conv's
        patches a few points at a time (a batch's patches are never held)."""
        module = use.role.module if use.role is not None else None
        if isinstance(module, CONVS) and use.x is not None and not use.has_inputs:
            for _, patches in patch_chunks(module, use.x):
                self._add_dense(patches, approx)
            return
        a, lay = use.a, self.layer
        assert a is not None
        if lay.embedding:
            assert self.A is not None
            padding = getattr(module, "padding_idx", None)
            self.A.add_(one_hot_counts(a, self.A.shape[0], padding).to(self.A.dtype))
            self.count += a.numel()
            return
        self._add_dense(a, approx)

    def _add_dense(self, a: torch.Tensor, approx: str) -> None:
        lay = self.layer
        if approx == "reduce":
            a = a.mean(dim=1, keepdim=True)
        self.count += a.shape[0] * a.shape[1]
        if self.A is None:
            return
        g = lay.groups
        a = a.reshape(a.shape[0], a.shape[1], g, -1) if g > 1 else a
        a = augment(a) if lay.joint else a
        if g == 1:
            add_gram(self.A, a.reshape(-1, a.shape[-1]))
        else:
            flat = a.reshape(-1, g, a.shape[-1])
            self.A.add_(torch.einsum("ngi,ngj->gij", flat, flat))

    def add_grads(self, b: torch.Tensor, rows: slice, approx: str) -> None:
        """One chunk of a use's output vectors b (K', B, R, D₂ᵤ) into G[rows, rows].

        A conv layer's b is a view of (K', B, D₂, R) (positions contiguous); flattening it to
        (K'·B·R, D₂) would copy it whole, so G is summed from per-example products in place.
        """
        if self.forward_only:
            return
        if approx == "reduce" and not self.layer.embedding:
            b = b.sum(dim=2, keepdim=True)
        g = self.layer.groups
        if g > 1:
            self.G.add_(_grouped_gram(b, g))
        elif b.shape[2] > 1 and b.stride(-1) != 1:
            bt = b.transpose(-1, -2).reshape(-1, b.shape[-1], b.shape[-2])  # (K'·B, D₂, R)
            self.G[rows, rows] += torch.bmm(bt, bt.transpose(1, 2)).sum(0)
        else:
            add_gram(self.G[rows, rows], b.reshape(-1, b.shape[-1]))

    def finish(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(G, A / count) after the all-reduce (a layer never called: A = 0); A is divided in
        place (no second copy of a large A)."""
        if self.A is not None and self.count > 0:
            self.A.div_(self.count)
        return self.G, self.A


def _grouped_gram(b: torch.Tensor, g: int) -> torch.Tensor:
    """Σ b_g b_gᵀ per group (g, d₂, d₂) for b (K', B, R, g·d₂)."""
    if b.stride(-1) != 1:  # a conv view: positions contiguous
        bt = b.transpose(-1, -2).reshape(-1, g, b.shape[-1] // g, b.shape[-2])
        return torch.einsum("ngir,ngjr->gij", bt, bt)
    flat = b.reshape(-1, g, b.shape[-1] // g)
    return torch.einsum("ngi,ngj->gij", flat, flat)


def gram(X: torch.Tensor, min_split: int = 512) -> torch.Tensor:
    """Xᵀ X for X (n, D). From D >= ``min_split`` on, only the upper 4 x 4 column blocks are
    multiplied and mirrored (10 of 16 block products: ~0.75x the time on one CPU thread)."""
    dim = X.shape[1]
    if dim < min_split:
        return X.T @ X
    return add_gram(X.new_zeros(dim, dim), X, min_split)


def add_gram(out: torch.Tensor, X: torch.Tensor, min_split: int = 512) -> torch.Tensor:
    """out += Xᵀ X in place for X (n, D), with no (D, D) temporary (a CNN head's A: 16 MiB);
    from D >= ``min_split`` on from the upper 4 x 4 column blocks, mirrored (as ``gram``)."""
    dim = X.shape[1]
    if dim < min_split:
        return out.addmm_(X.T, X)
    edges = [dim * i // 4 for i in range(5)]
    cols = [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    for i, si in enumerate(cols):
        for sj in cols[i:]:
            block = X[:, si].T @ X[:, sj]
            out[si, sj] += block
            if sj != si:
                out[sj, si] += block.T
    return out
