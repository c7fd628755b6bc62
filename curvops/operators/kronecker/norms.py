"""Per-example gradients of torch's norm layers in closed form (no vmap, no second forward
per vector): their output is affine in the parameters, y = x̂ ⊙ weight + bias, so
  ∂⟨b, y⟩/∂weight = Σ_positions b ⊙ x̂,   ∂⟨b, y⟩/∂bias = Σ_positions b
with x̂ = the module at weight = 1, bias = 0 (one call per use and batch, cached on the use).
nn.LayerNorm / nn.RMSNorm: the parameters span the trailing ``normalized_shape`` axes;
nn.GroupNorm and BatchNorm in eval mode: the channel axis 1. Other modules: ``fallback``'s
vmapped vector-Jacobian products.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from curvops.operators.kronecker.hooks import Use

TRAILING = (nn.LayerNorm, nn.RMSNorm)
CHANNELS = (nn.GroupNorm, _BatchNorm)


def closed_form(module: nn.Module | None) -> bool:
    """Whether ``norm_grads`` applies: one of torch's norm layers, unmodified, its
    parameters the affine ones (BatchNorm: in eval mode, as curvops requires)."""
    if type(module) in (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm):
        return True
    plain = isinstance(module, _BatchNorm) and type(module).forward is _BatchNorm.forward
    return plain and not module.training  # type: ignore[union-attr]


def norm_grads(use: Use, grads: list[torch.Tensor], wanted: dict[int, torch.Tensor], summed: bool):
    """{id(p): (K, B, *p.shape)} ((K, 1, …) when ``summed``) for b = grads[0] (K, B, *out)."""
    module = use.module
    assert module is not None
    b = grads[0]
    K, B = b.shape[:2]
    if isinstance(module, TRAILING):  # (K, B, R, F): F the normalised features
        b3, over = b.reshape(K, B, -1, math.prod(module.normalized_shape)), 2
    else:  # channels on axis 1: (K, B, C, R)
        b3, over = b.reshape(K, B, b.shape[2], -1), 3
    out = {}
    for name, p in module.named_parameters(recurse=False):
        if id(p) not in wanted:
            continue
        g = b3 * _normalized(use, b3[0]) if name == "weight" else b3
        g = _sum_over(g, over).reshape(K, B, *p.shape)
        out[id(p)] = g.sum(dim=1, keepdim=True) if summed else g
    return out


def _sum_over(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t.sum(dim); a product with ones where dim is t's contiguous axis (a conv's or a
    transposed layer's positions), 2-4x a short inner reduction's speed on CPU."""
    if t.stride(dim) == 1 and t.shape[dim] > 1:
        return t.movedim(dim, -1) @ t.new_ones(t.shape[dim])
    return t.sum(dim=dim)


def _normalized(use: Use, like: torch.Tensor) -> torch.Tensor:
    """x̂ as ``like`` (B, R, F) or (B, C, R), in its memory layout (the output gradients'), so
    that b ⊙ x̂ runs over matching strides: the module with weight 1 and bias 0 on the use's
    inputs, cached on the use (the layout is the same for every vector of a batch)."""
    if use.xhat is not None and use.xhat.stride() == like.stride():
        return use.xhat
    module = use.module
    assert module is not None
    if use.xhat is None:
        unit = {
            name: torch.ones_like(p) if name == "weight" else torch.zeros_like(p)
            for name, p in module.named_parameters(recurse=False)
        }
        with torch.no_grad():
            xhat = functional_call(module, unit, use.args, use.kwargs)
        use.xhat = xhat.expand(use.outputs[0].shape).reshape(like.shape)
    target = torch.empty_like(like)  # like's layout where dense, else contiguous
    if target.stride() == like.stride() != use.xhat.stride():
        use.xhat = target.copy_(use.xhat)
    return use.xhat
