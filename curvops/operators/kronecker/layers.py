"""The layers KFAC / EKFAC understand: which modules, their inputs and output gradients.

Per layer, the weight acts as a matrix W (D₂, D₁) on R "positions" of each data point:
  nn.Linear on x (B, ..., D₁):  positions = the axes between batch and features
  nn.Conv2d on x (B, C, H, W):  positions = the L output pixels, D₁ = C·kh·kw (unfolded patches)
so a layer's inputs are a (B, R, D₁) and its output gradients b (..., B, R, D₂).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

SUPPORTED_LAYERS = "nn.Linear, nn.Conv2d (groups=1)"


@dataclass
class Layer:
    """A supported module and the chosen parameters it owns (indices into the layout)."""

    name: str
    module: nn.Module
    weight: int | None  # index of the weight in the operator's params, or None
    bias: int | None
    joint: bool  # weight and bias in one block (inputs augmented with a 1)

    @property
    def in_dim(self) -> int:
        """D₁ of the weight's A factor (+1 when the bias joins the weight)."""
        return weight_in_dim(self.module) + int(self.joint)

    @property
    def out_dim(self) -> int:
        return _weight(self.module).shape[0]


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def weight_in_dim(module: nn.Module) -> int:
    return _weight(module)[0].numel()


def check_supported(name: str, module: nn.Module, param_names: list[str]) -> None:
    """Raise a ValueError naming the module if KFAC cannot handle it."""
    what = ", ".join(f"'{n}'" for n in param_names)
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(
            f"module '{name}' (Conv2d with groups={module.groups}) owns {what}: KFAC supports "
            f"{SUPPORTED_LAYERS}. Pass params= without its parameters"
        )
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise ValueError(
            f"module '{name}' ({type(module).__name__}) owns the trainable parameter(s) {what}, "
            f"but KFAC supports only {SUPPORTED_LAYERS}. Pass params= without them, e.g. "
            "params=[p for n, p in model.named_parameters() if ...], or freeze them"
        )


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs the weight multiplies: (B, R, D₁)."""
    if isinstance(module, nn.Conv2d):
        if x.ndim != 4:
            raise ValueError(
                f"Conv2d input of shape {tuple(x.shape)}: KFAC needs a batch axis (B, C, H, W)"
            )
        return _patches(module, x)
    if x.ndim < 2:
        raise ValueError(f"Linear input of shape {tuple(x.shape)}: KFAC needs a batch axis")
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _patches(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfolded patches (B, L, C·kh·kw), in the order of weight.reshape(C_out, -1).

    Strided windows (``Tensor.unfold``) rather than ``F.unfold``, whose CPU kernel is ~20x
    slower here; a dilation d takes every d-th entry of a window of size d(k − 1) + 1.
    """
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    windows = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    windows = windows[..., ::dh, ::dw]  # (B, C, H_out, W_out, kh, kw)
    return rearrange(windows, "b c h w i j -> b (h w) (c i j)")


def output_grads(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Gradients w.r.t. the layer output (K, B, ...) -> (K, B, R, D₂)."""
    if isinstance(module, nn.Conv2d):
        return rearrange(g, "k b c h w -> k b (h w) c")
    return g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])


def augment(a: torch.Tensor) -> torch.Tensor:
    """Append a constant 1 to every input (B, R, D₁) -> (B, R, D₁ + 1): the bias column."""
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


def group_by_module(model: nn.Module, params: list[torch.Tensor]):
    """[(module name, module, its chosen params)] in order of first appearance in ``params``."""
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for mod_name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append((mod_name or "(root)", module))
    names = {id(p): n for n, p in model.named_parameters()}
    groups: dict[int, tuple[str, nn.Module, list[torch.Tensor]]] = {}
    for p in params:
        if id(p) not in owners:
            raise ValueError(f"a tensor of shape {tuple(p.shape)} in params is not in the model")
        if len(owners[id(p)]) > 1:
            mods = " and ".join(f"'{n}'" for n, _ in owners[id(p)])
            raise ValueError(
                f"parameter '{names[id(p)]}' is shared by modules {mods} (weight tying): KFAC "
                "needs one module per parameter. Pass params= without it"
            )
        name, module = owners[id(p)][0]
        groups.setdefault(id(module), (name, module, []))[2].append(p)
    for name, module, ps in groups.values():
        check_supported(name, module, [names[id(p)] for p in ps])
    return list(groups.values())


def make_layers(groups, index_of: dict[int, int], separate: bool) -> list[Layer]:
    """Layers with the indices of their weight / bias in the operator's parameter layout."""
    layers = []
    for name, module, ps in groups:
        ids = {id(p) for p in ps}
        w = index_of[id(module.weight)] if id(module.weight) in ids else None
        b = module.bias
        b = index_of[id(b)] if b is not None and id(b) in ids else None
        layers.append(
            Layer(name, module, w, b, joint=not separate and w is not None and b is not None)
        )
    return layers


def param_blocks(groups, separate: bool) -> list[list[torch.Tensor]]:
    """The operator's blocks: per module [weight], [bias] (separate) or [weight, bias]."""
    blocks = []
    for _, module, ps in groups:
        ordered = sorted(ps, key=lambda p: p is not module.weight)  # weight first
        blocks.extend([[p] for p in ordered] if separate else [ordered])
    return blocks
