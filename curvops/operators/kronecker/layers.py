"""The layers with a Kronecker structure: how each one's weight acts as a matrix W (D₂, D₁).

Per call (a "use"), the inputs a (B, R, D₁) and output gradients b (K, B, R, D₂) at R
positions sharing the weight (tokens, pixels):
  nn.Linear                  W = weight (D₂, D₁); positions: the axes between batch and features
  transformers' Conv1D       W = weightᵀ (weight (D₁, D₂), y = x weight + bias)
  nn.Conv1d / 2d / 3d        W = weight.reshape(D₂, C_in/g · k), a = unfolded patches; with
                             groups g, rows of group g see only their channels' patches
  nn.Embedding               W = weightᵀ (D, V), a = one-hot token ids (kept as ids (B, R))
  nn.MultiheadAttention      in_proj_weight (3E, E) on q = k = v (self-attention: one call;
                             otherwise one call per row slice), out_proj on the heads' output
A ``Role`` is one (weight, bias) pair a module multiplies its inputs with.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
KRONECKER_LAYERS = (
    "nn.Linear, nn.Conv1d/2d/3d (any groups), nn.Embedding, transformers' Conv1D, "
    "nn.MultiheadAttention's projections"
)


@dataclass(frozen=True, eq=False)
class Role:
    """A (weight, bias) pair a module multiplies its inputs with, and its geometry.

    ``kind``: "dense" (a (B, R, D₁) input) or "embedding" (token ids); ``transposed``: the
    weight is stored (D₁, D₂); ``rows``: D₂ (all groups); ``cols``: D₁ (per group).
    """

    module: nn.Module
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    kind: str
    transposed: bool
    rows: int
    cols: int
    groups: int = 1

    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.weight, self.bias) if p is not None]


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D, recognised by name (transformers is optional)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def site_kind(module: nn.Module) -> str | None:
    """ "linear", "conv", "embedding", "mha" for a layer curvops factors, else None."""
    cls = type(module)
    if isinstance(module, nn.Linear) and cls.forward is nn.Linear.forward:
        return "linear"
    if isinstance(module, CONVS) and cls.forward in [c.forward for c in CONVS]:
        return "conv"
    if is_hf_conv1d(module):
        return "linear"
    if isinstance(module, nn.Embedding) and cls.forward is nn.Embedding.forward:
        plain = module.max_norm is None and not module.scale_grad_by_freq
        return "embedding" if plain else None
    if isinstance(module, nn.MultiheadAttention) and cls.forward is nn.MultiheadAttention.forward:
        return "mha"
    return None


def roles_of(module: Any, kind: str | None) -> list[Role]:
    """The (weight, bias) pairs a module of ``kind`` applies."""
    bias = getattr(module, "bias", None)
    if kind == "linear" and is_hf_conv1d(module):
        D1, D2 = module.weight.shape
        return [Role(module, module.weight, bias, "dense", True, D2, D1)]
    if kind == "linear":
        return [Role(module, module.weight, bias, "dense", False, *module.weight.shape)]
    if kind == "conv":
        w = module.weight
        return [Role(module, w, bias, "dense", False, w.shape[0], w[0].numel(), module.groups)]
    if kind == "embedding":
        V, D = module.weight.shape
        return [Role(module, module.weight, None, "embedding", True, D, V)]
    if kind == "mha":
        return _mha_roles(module)
    return []


def _mha_roles(m: nn.MultiheadAttention) -> list[Role]:
    """Packed in_proj_weight with in_proj_bias, or q/k/v_proj_weight sharing in_proj_bias
    (a bias without a weight of its own); out_proj is an nn.Linear of its own."""
    b = m.in_proj_bias
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight
        return [Role(m, w, b, "dense", False, *w.shape)]
    roles = [
        Role(m, w, None, "dense", False, *w.shape)
        for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    ]
    if b is not None:
        roles.append(Role(m, None, b, "dense", False, b.shape[0], 1))
    return roles


# -------------------------------------------------------------------- inputs and layouts
def dense_inputs(x: torch.Tensor, batch: int) -> torch.Tensor:
    """A Linear's inputs (B, ..., D₁) -> (B, R, D₁)."""
    if x.ndim < 2:
        raise ValueError(f"Linear input of shape {tuple(x.shape)}: KFAC needs a batch axis")
    return x.reshape(batch, -1, x.shape[-1])


def conv_patches(module: Any, x: torch.Tensor) -> torch.Tensor:
    """Unfolded patches (B, L, C·∏k) in the order of weight.reshape(C_out, -1).

    Strided windows (``Tensor.unfold``) rather than ``F.unfold`` (~20x slower on CPU here),
    any number of spatial axes; a dilation d takes every d-th entry of a window d(k − 1) + 1.
    """
    n = len(module.kernel_size)
    if x.ndim != n + 2:
        raise ValueError(
            f"{type(module).__name__} input of shape {tuple(x.shape)}: KFAC needs a batch axis "
            f"(B, C, {n} spatial axes)"
        )
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    for i, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
    every: tuple[Any, ...] = (Ellipsis, *[slice(None, None, d) for d in module.dilation])
    x = x[every]  # (B, C, *out, *k)
    order = (0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
    width = x.shape[1] * math.prod(x.shape[2 + n :])
    return x.permute(order).reshape(x.shape[0], -1, width)


PATCH_BUDGET = 1 << 18  # unfolded patch entries per step when a batch's patches are not held


def patch_chunks(module: Any, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, patches (n, L, C·∏k)) of a few points at a time: ~PATCH_BUDGET numbers each."""
    first = conv_patches(module, x[:1])
    step = max(1, PATCH_BUDGET // max(1, first.numel()))
    for start in range(0, x.shape[0], step):
        yield (
            start,
            first if start == 0 and step == 1 else conv_patches(module, x[start : start + step]),
        )


def role_inputs(role: Role, x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, R, D₁) inputs of a call (token ids (B, R) for an embedding)."""
    if role.kind == "embedding":
        return x.reshape(batch, -1)
    if isinstance(role.module, CONVS):
        return conv_patches(role.module, x)
    return dense_inputs(x, batch)


def output_grads(role: Role, g: torch.Tensor, batch: int) -> torch.Tensor:
    """Gradients w.r.t. a call's output (K, B, ...) -> (K, B, R, D₂)."""
    if isinstance(role.module, CONVS):
        return g.flatten(3).transpose(2, 3)  # (K, B, C, *spatial) -> (K, B, R, C), a view
    return g.reshape(g.shape[0], batch, -1, g.shape[-1])


def augment(a: torch.Tensor) -> torch.Tensor:
    """Append a constant 1 to every input (B, R, D₁) -> (B, R, D₁ + 1): the bias column."""
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


def one_hot_counts(ids: torch.Tensor, size: int, padding_idx: int | None) -> torch.Tensor:
    """Σ_{n,r} one_hot(id_nr) (V,): the diagonal of Σ a aᵀ; padding tokens are inputs 0."""
    counts = torch.bincount(ids.reshape(-1), minlength=size)
    if padding_idx is not None:
        counts[padding_idx] = 0
    return counts


# -------------------------------------------------------------------- per-example gradients
def weight_grads(role: Role, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example gradients of the rows of W (D₂ᵤ, D₁) a call touches: Σ_r b_r a_rᵀ,
    a (B, R, D₁), b (K, B, R, D₂ᵤ) -> (K, B, D₂ᵤ, D₁); embedding: a = ids (B, R)."""
    if role.kind == "embedding":
        return _embedding_grads(role, a, b)
    g = role.groups
    if g == 1:
        return torch.einsum("kbri,brj->kbij", b, a)
    K, B, R, D2 = b.shape
    bg, ag = b.reshape(K, B, R, g, D2 // g), a.reshape(B, R, g, -1)
    return torch.einsum("kbrgi,brgj->kbgij", bg, ag).reshape(K, B, D2, -1)


def _embedding_grads(role: Role, ids: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(K, B, D, V): the rows of Wᵀ, b scattered to the columns of the tokens."""
    K, B, R, D = b.shape
    padding = getattr(role.module, "padding_idx", None)
    if padding is not None:
        b = b * (ids != padding).to(b.dtype).unsqueeze(-1)
    out = b.new_zeros(K, B, role.cols, D)
    index = ids.unsqueeze(0).unsqueeze(-1).expand(K, B, R, D)
    return out.scatter_add_(2, index, b).transpose(2, 3)
