"""The raw torch floor of a type-2 KFAC construction: the textbook algorithm, no checks.

For cross-entropy ("mean" over N points) on a model of Linear layers (any leading axes,
"expand") and LayerNorms, in the model's dtype, with as little Python as the math allows:
one forward pass per batch with hooks, then one backward per class column c to the layer
outputs (``autograd.grad``), summed in place:
  S_n = diag(√p_n) − p_n √p_nᵀ / √N  (S Sᵀ = (diag p − p pᵀ) / N),  b_nrc = J_{z_nr}ᵀ S_n[:, c]
  Linear:    G += Σ_{n,r} b bᵀ,  A += Σ_{n,r} a aᵀ (A / (N R) at the end), bias block G
  LayerNorm: exact blocks += Σ_{n,c} g gᵀ per parameter, g = Σ_r b ⊙ x̂ (weight), Σ_r b (bias)
Its first product is G V A per weight, G v per bias, the dense blocks of the LayerNorms. It
is the cost floor of the algorithm curvops and curvlinops run (curvops drops one of the C
columns, the null direction of diag p − p pᵀ), not a reference for their numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.problems import Problem


def raw_kfac(
    problem: Problem, skip_columns: int = 0
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(matmat, P) of the raw type-2 KFAC of ``problem`` (Linear + LayerNorm modules);
    ``skip_columns`` = 1 times C − 1 columns (the cost of curvops's, not its matrix)."""
    model = problem.model
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    like = next(model.parameters())
    G = [like.new_zeros(m.out_features, m.out_features) for m in lins]
    A = [like.new_zeros(m.in_features, m.in_features) for m in lins]
    blocks = [like.new_zeros(2, m.weight.numel(), m.weight.numel()) for m in norms]
    N = sum(len(y) for _, y in problem.data)
    rows = [0] * len(lins)
    for X, _ in problem.data:
        for i, n in enumerate(_batch(model, lins, norms, X, N, G, A, blocks, skip_columns)):
            rows[i] += n
    A = [a / n for a, n in zip(A, rows)]
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    return (lambda M: _matmat(params, lins, norms, G, A, blocks, M)), P


def _batch(model, lins, norms, X, N, G, A, blocks, skip: int) -> list[int]:
    """Add one batch; returns each Linear layer's number of input rows N_b R."""
    outs, ins = {}, {}

    def hook(module, args, output):
        outs[module], ins[module] = output, args[0].detach()

    handles = [m.register_forward_hook(hook) for m in lins + norms]
    try:
        f = model(X)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for i, m in enumerate(lins):
        a = ins[m].reshape(-1, m.in_features)
        A[i].addmm_(a.T, a)
        rows.append(a.shape[0])
    xhat = [F.layer_norm(ins[m], m.normalized_shape, None, None, m.eps) for m in norms]
    p = torch.softmax(f.detach(), dim=1)
    S = (torch.diag_embed(p.sqrt()) - p.unsqueeze(2) * p.sqrt().unsqueeze(1)) / N**0.5
    targets = [outs[m] for m in lins + norms]
    for c in range(f.shape[1] - skip):
        grads = torch.autograd.grad(f, targets, S[:, :, c], retain_graph=True)
        for i, g in enumerate(grads[: len(lins)]):
            b = g.reshape(-1, g.shape[-1])
            G[i].addmm_(b.T, b)
        for j, g in enumerate(grads[len(lins) :]):
            b = g.reshape(g.shape[0], -1, g.shape[-1])
            for block, g_p in zip(blocks[j], ((b * xhat[j].reshape(b.shape)).sum(1), b.sum(1))):
                block.addmm_(g_p.T, g_p)
    return rows


def _matmat(params, lins, norms, G, A, blocks, M: torch.Tensor) -> torch.Tensor:
    """(P, K) -> (P, K) in the model's parameter order (and dtype)."""
    M = M.to(params[0].dtype)
    offsets, start = {}, 0
    for p in params:
        offsets[id(p)] = slice(start, start + p.numel())
        start += p.numel()
    out = torch.zeros_like(M)
    for Gi, Ai, m in zip(G, A, lins):
        w = offsets[id(m.weight)]
        V = M[w].T.reshape(-1, *m.weight.shape)  # (K, D2, D1)
        out[w] = (Gi @ V @ Ai).reshape(M.shape[1], -1).T
        if m.bias is not None:
            out[offsets[id(m.bias)]] = Gi @ M[offsets[id(m.bias)]]
    for Bj, m in zip(blocks, norms):
        for block, p in zip(Bj, (m.weight, m.bias)):
            out[offsets[id(p)]] = block @ M[offsets[id(p)]]
    return out
