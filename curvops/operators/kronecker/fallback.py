"""Fallback blocks: the exact GGN / Fisher block of parameters without a Kronecker structure
(norm layers, custom modules, a weight tied across layer kinds), or its diagonal.

Per data point n and backpropagated vector k (the vectors of KFAC's G: type-2, MC,
empirical), the per-example gradient over all uses of the parameters is
  g_nk = Σ_uses J_{use,n}ᵀ b_{use,nk}  (p,),   exact: F = Σ_{n,k} g_nk g_nkᵀ,  diagonal: Σ g_nk²
— exactly the block of the GGN / Fisher, cross terms between uses included. J_useᵀ b comes
from the layer inputs for Kronecker kinds (Σ_r b aᵀ) and from vmapped vector-Jacobian
products of the module otherwise (``torch.func``; a loop over the points if vmap fails).
forward-only: b runs over every unit vector at a use's outputs, F = Σ_n J_nᵀ J_n / (N R)
(R positions per point: an output's size per point over its last axis), as I ⊗ A for a layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import functional_call, vjp, vmap

from curvops.operators.kronecker.hooks import Output, Use
from curvops.operators.kronecker.layers import weight_grads
from curvops.operators.kronecker.norms import closed_form, norm_grads
from curvops.operators.kronecker.tying import Fallback

UNIT_CHUNK = 256  # forward-only: unit cotangents per vector-Jacobian batch


# -------------------------------------------------------------------- per-example gradients
def use_grads(use: Use, entry, wanted: dict[int, torch.Tensor], summed: bool = False):
    """{id(p): (K, B, *p.shape)} per-example gradients of the ``wanted`` parameters the use
    touches (``summed``: over the batch, (K, 1, *p.shape)). ``entry``: the use's chunk entry,
    b (K, B, R, D₂ᵤ) for a Kronecker layer, its outputs' gradients for a module."""
    if use.role is None and closed_form(use.module):
        return norm_grads(use, entry, wanted, summed)
    if use.role is None:
        return _module_grads(use, entry, wanted, summed)
    role, b, a = use.role, entry, use.a
    assert a is not None
    if summed:  # the batch as one point
        b = b.reshape(b.shape[0], 1, -1, b.shape[-1])
        a = a.reshape(1, -1) if role.kind == "embedding" else a.reshape(1, -1, a.shape[-1])
    out = {}
    for pid, rows in use.rows.items():
        p = wanted.get(pid)
        if p is None:
            continue
        if p is role.weight:
            out[pid] = _placed(p, weight_grads(role, a, b), rows, role.transposed)
        else:
            out[pid] = _placed(p, b.sum(2), rows, False)
    return out


def _placed(p: torch.Tensor, g: torch.Tensor, rows: slice, transposed: bool) -> torch.Tensor:
    """Rows of the matrix of ``p`` ((K, B, D₂ᵤ, D₁); a bias (K, B, D₂ᵤ)) -> (K, B, *p.shape)."""
    K, B = g.shape[:2]
    if p.ndim == 1:
        full = g.new_zeros(K, B, p.shape[0])
        full[:, :, rows] = g
        return full
    full = g.new_zeros(K, B, p.shape[1] if transposed else p.shape[0], g.shape[-1])
    full[:, :, rows] = g
    return (full.transpose(2, 3) if transposed else full).reshape(K, B, *p.shape)


def _module_grads(
    use: Use, grads: list[torch.Tensor], wanted: dict[int, torch.Tensor], summed: bool
):
    """Per-example vector-Jacobian products through the module: {id(p): (K, B, *shape)}
    (``summed``: one product over the whole batch, (K, 1, *shape))."""
    module = use.module
    assert module is not None
    own = {n: p for n, p in module.named_parameters(recurse=False) if id(p) in wanted}
    if not own or not grads:
        return {}
    B = grads[0].shape[1]
    leaves, rebuild = _flatten((use.args, use.kwargs))
    mapped = [isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == B for x in leaves]
    point_inputs = [x for x, m in zip(leaves, mapped) if m]
    params = {n: p.detach() for n, p in own.items()}
    if summed:
        return {id(own[n]): g.unsqueeze(1) for n, g in _pullback(use, params, grads).items()}

    def per_point(inputs, cotangents):
        def f(ps):
            it = iter(inputs)
            args, kwargs = rebuild(
                [next(it).unsqueeze(0) if m else x for x, m in zip(leaves, mapped)]
            )
            outs = _outputs(functional_call(module, ps, args, kwargs), use.positions)
            return tuple(o.squeeze(0) if o.shape[:1] == (1,) else o for o in outs)

        pullback = vjp(f, params)[1]
        return vmap(pullback)(cotangents)[0]

    try:
        result = vmap(per_point, in_dims=(0, 1), out_dims=1)(point_inputs, tuple(grads))
    except RuntimeError:  # an operation without a batching rule: one point at a time
        points = [
            per_point([x[n] for x in point_inputs], tuple(g[:, n] for g in grads)) for n in range(B)
        ]
        result = {k: torch.stack([pt[k] for pt in points], dim=1) for k in params}
    return {id(own[n]): g for n, g in result.items()}


def _pullback(use: Use, params: dict, grads: list[torch.Tensor]) -> dict:
    """Σ_n J_nᵀ b_n over the batch for each of K cotangents: {name: (K, *shape)}."""

    module = use.module
    assert module is not None

    def f(ps):
        outs = _outputs(functional_call(module, ps, use.args, use.kwargs), use.positions)
        return tuple(o.expand(g.shape[1:]) for o, g in zip(outs, grads))  # a shared output

    pullback = vjp(f, params)[1]
    return vmap(pullback)(tuple(grads))[0]


def _outputs(output, positions: tuple[int, ...] | None) -> list[torch.Tensor]:
    if positions is None:
        return [output]
    return [output[i] for i in positions]


def _flatten(tree) -> tuple[list, Callable[[list], tuple]]:
    """Leaves of nested tuples / lists / dicts, and the function that rebuilds the tree."""
    leaves: list = []

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v) for v in node)
        leaves.append(node)
        return len(leaves) - 1

    skeleton = walk(tree)

    def rebuild(values: list):
        def fill(node):
            if isinstance(node, dict):
                return {k: fill(v) for k, v in node.items()}
            if isinstance(node, (list, tuple)):
                return type(node)(fill(v) for v in node)
            return values[node]

        return fill(skeleton)

    return leaves, rebuild


def unit_cotangents(outputs: list[Output], chunk: int = UNIT_CHUNK):
    """forward-only: chunks of every unit vector at the outputs, (K', B, *out.shape) each."""
    B = outputs[0].shape[0]
    sizes = [math.prod(o.shape[1:]) for o in outputs]
    total = sum(sizes)
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        eye = torch.eye(total, dtype=outputs[0].dtype, device=outputs[0].device)[start:stop]
        parts = torch.split(eye, sizes, dim=1)
        yield [
            p.reshape(stop - start, 1, *o.shape[1:]).expand(stop - start, B, *o.shape[1:])
            for p, o in zip(parts, outputs)
        ]


def positions(use: Use) -> int:
    """R of a use (forward-only's normalisation): its inputs' positions, or an output's size
    per point over its last axis."""
    if use.a is not None:
        return use.a.shape[1]
    out = use.outputs[0]
    return max(1, math.prod(out.shape[1:-1]))


# -------------------------------------------------------------------- accumulation
class FallbackSums:
    """Σ g gᵀ (exact) or Σ g² (diagonal) of one fallback block over the data."""

    def __init__(self, block: Fallback, like: torch.Tensor) -> None:
        self.block = block
        self.params = {id(p): p for p in block.params}
        p = block.numel
        shape = (p, p) if block.mode == "exact" else (p,)
        self.total = like.new_zeros(shape)
        self.count = like.new_zeros(())

    def add(self, per_use: list[dict[int, torch.Tensor]]) -> None:
        """Add one chunk: per use, {id(p): (K, B, *shape)}; summed over uses per point."""
        found = [g for g in per_use if g]
        if not found:
            return
        K, B = next(iter(found[0].values())).shape[:2]
        flat = []
        for p in self.block.params:
            parts = [g[id(p)] for g in found if id(p) in g]
            total = sum(parts[1:], parts[0]) if parts else None
            flat.append(
                total.reshape(K * B, -1) if total is not None else p.new_zeros(K * B, p.numel())
            )
        X = torch.cat(flat, dim=1) if len(flat) > 1 else flat[0]
        if self.block.mode == "exact":
            self.total.add_(X.T @ X)
        else:
            self.total.add_(X.square().sum(0))
