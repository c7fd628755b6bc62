"""KFAC's factors written out from their definition, independently of curvops (float64).

Over the whole data set in one batch, with every call c of a layer (weight tying):
  A = Σ_{c,n,r} a a ᵀ / Σ_c N R_c            (inputs from a forward hook; conv patches by
                                              ``F.unfold``, embeddings as one-hot vectors)
  G = Σ_{c,n,r} J_{c,nr}ᵀ H J_{c,nr}           (J_{c,nr} = ∂f / ∂(output of call c at point n,
                                              position r), by jacrev through a zero
                                              perturbation of the output; H = ∇²_f L)
type-2, "expand"; H is block-diagonal over the loss terms, so this is Σ b bᵀ over the
backpropagated columns of a square root of H split by term, as curvops computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from oracles import concat_data
from torch import nn
from torch.autograd.functional import hessian
from torch.func import jacrev


def hand_factors(model, loss_fn, data, modules: dict[str, nn.Module]):
    """{name: (G, A)} for Linear / Conv1d / Conv2d / Embedding / transformers Conv1D modules:
    G (D₂, D₂) (grouped conv: (g, d₂, d₂)), A (D₁, D₁) ((g, d₁, d₁); embedding: (V,))."""
    X, y = concat_data(data)
    B = y.shape[0]
    calls = _record_calls(model, X, modules)
    deltas = [torch.zeros(B, *out_shape[1:], dtype=torch.float64) for _, _, out_shape in calls]

    def f_of(*ds):
        it = iter(ds)
        hooks = [m.register_forward_hook(lambda m, a, o: o + next(it)) for m in _order(calls)]
        try:
            return model(X)
        finally:
            for h in hooks:
                h.remove()

    with torch.no_grad():
        f0 = model(X)
    Js = jacrev(f_of, argnums=tuple(range(len(deltas))))(*deltas)
    H = hessian(lambda f: loss_fn(f, y), f0).reshape(f0.numel(), f0.numel())
    out = {}
    for name, module in modules.items():
        mine = [i for i, (m, _, _) in enumerate(calls) if m is module]
        G = sum(_g_of(module, Js[i].reshape(f0.numel(), *deltas[i].shape), H) for i in mine)
        inputs = [_inputs(module, calls[i][1], B) for i in mine]
        A = sum(_gram(module, a) for a in inputs) / sum(a.shape[0] * a.shape[1] for a in inputs)
        out[name] = (G, A)
    return out


def _record_calls(model, X, modules):
    calls = []
    wanted = {id(m) for m in modules.values()}
    hooks = [
        m.register_forward_hook(lambda m, a, o: calls.append((m, a[0].detach(), o.shape)))
        for m in model.modules()
        if id(m) in wanted
    ]
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _order(calls):
    """Each hooked module once (a hook per module; calls come in order anyway)."""
    seen, out = set(), []
    for m, _, _ in calls:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def _g_of(module, J, H):
    """Σ_{n,r} J_nrᵀ H J_nr for J (F, B, *out): features on axis 1 of a conv output."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        J = J.flatten(3).transpose(2, 3)  # (F, B, R, C)
    J = J.reshape(J.shape[0], J.shape[1], -1, J.shape[-1])
    G = torch.einsum("fbri,fg,gbrj->ij", J, H, J)
    g = getattr(module, "groups", 1)
    if g == 1:
        return G
    d = G.shape[0] // g
    return torch.stack([G[i * d : (i + 1) * d, i * d : (i + 1) * d] for i in range(g)])


def _inputs(module, x, B):
    """(B, R, D₁) inputs, independently of curvops."""
    if x.shape[0] == 1 and B > 1:
        x = x.expand(B, *x.shape[1:])
    if isinstance(module, nn.Embedding):
        a = F.one_hot(x.reshape(B, -1), module.num_embeddings).double()
        if module.padding_idx is not None:
            a[..., module.padding_idx] = 0
        return a
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return cols.transpose(1, 2)
    if isinstance(module, nn.Conv1d):
        cols = F.unfold(
            x.unsqueeze(2), (1, module.kernel_size[0]), (1, module.dilation[0]),
            (0, module.padding[0]), (1, module.stride[0]),
        )  # fmt: skip
        return cols.transpose(1, 2)
    return x.reshape(B, -1, x.shape[-1])


def _gram(module, a):
    g = getattr(module, "groups", 1)
    flat = a.reshape(-1, a.shape[-1])
    if isinstance(module, nn.Embedding):
        return (flat**2).sum(0)  # one-hot: Σ a aᵀ is diagonal
    if g == 1:
        return flat.T @ flat
    parts = flat.reshape(flat.shape[0], g, -1)
    return torch.einsum("ngi,ngj->gij", parts, parts)


def kronecker_modules(model) -> dict[str, nn.Module]:
    """The modules whose calls curvops hooks (Linear, Conv, Embedding, transformers Conv1D)."""
    from curvops.operators.kronecker.layers import site_kind

    return {
        name: m
        for name, m in model.named_modules()
        if site_kind(m) in ("linear", "conv", "embedding") and any(m.parameters(recurse=False))
    }
