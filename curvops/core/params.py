"""Which parameters an operator acts on, how they split into blocks, and flat <-> shaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Blocks = str | Sequence[Sequence[torch.Tensor]] | None


@dataclass(frozen=True)
class ParameterLayout:
    """The ordered parameters of an operator and their split into contiguous blocks.

    ``params``: tensors in flat-vector order; ``names``: their names in the model;
    ``blocks``: index lists into ``params`` (contiguous, covering all); ``block_names``.
    """

    params: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]
    block_names: tuple[str, ...]

    @property
    def sizes(self) -> list[int]:
        return [p.numel() for p in self.params]

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    @property
    def slices(self) -> list[slice]:
        """One slice of the flat vector per parameter."""
        out, start = [], 0
        for n in self.sizes:
            out.append(slice(start, start + n))
            start += n
        return out

    @property
    def block_slices(self) -> list[slice]:
        """One slice of the flat vector per block."""
        slices = self.slices
        return [slice(slices[b[0]].start, slices[b[-1]].stop) for b in self.blocks]


def build_layout(model: nn.Module, params: Iterable[torch.Tensor] | None, blocks: Blocks):
    """Validate ``params`` / ``blocks`` against ``model`` and order them block by block."""
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    if isinstance(blocks, (list, tuple)):
        _check_block_lists(blocks)
        block_lists = [list(b) for b in blocks]
        flat = [p for b in block_lists for p in b]
        if params is not None and {id(p) for p in params} != {id(p) for p in flat}:
            raise ValueError("`params` and `blocks` name different tensors: pass one of them")
        chosen = _validate_params(flat, names_by_id)
        block_idx, start = [], 0
        for i, b in enumerate(block_lists):
            if not b:
                raise ValueError(f"block {i} is empty: every block needs at least one parameter")
            block_idx.append(tuple(range(start, start + len(b))))
            start += len(b)
        block_names = ["+".join(names_by_id[id(p)] for p in b) for b in block_lists]
        return _layout(chosen, names_by_id, block_idx, block_names)

    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameter with requires_grad=True")
    chosen = _validate_params(list(params), names_by_id)
    if blocks is None:
        return _layout(chosen, names_by_id, [tuple(range(len(chosen)))], ["all"])
    if blocks != "layer":
        raise ValueError(
            f"blocks must be None, 'layer' or a list of parameter lists; got {blocks!r}"
        )
    return _layer_layout(model, chosen, names_by_id)


def _check_block_lists(blocks: Sequence) -> None:
    """A list of parameter lists, not a flat list of tensors (list(tensor) splits rows)."""
    if any(isinstance(b, torch.Tensor) for b in blocks):
        raise TypeError(
            "blocks is a flat list of tensors, but it must be a list of parameter lists: "
            "write blocks=[[p] for p in params] (one block per tensor), group them, e.g. "
            "blocks=[[layer.weight, layer.bias], ...], or pass blocks='layer'"
        )


def _validate_params(params: list, names_by_id: dict) -> list[torch.Tensor]:
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] is a {type(p).__name__}, not a tensor of the model")
        if id(p) not in names_by_id:
            raise ValueError(
                f"params[{i}] (shape {tuple(p.shape)}) is not a parameter of the model; "
                "pass tensors taken from model.parameters()"
            )
        if not p.requires_grad:
            raise ValueError(
                f"parameter '{names_by_id[id(p)]}' is frozen (requires_grad=False): "
                "leave it out of params, or set requires_grad=True"
            )
        if id(p) in seen:
            raise ValueError(f"parameter '{names_by_id[id(p)]}' is listed twice")
        seen.add(id(p))
    if not params:
        raise ValueError("params is empty: pass at least one parameter of the model")
    _check_dtype_device(params, names_by_id)
    return params


def _check_dtype_device(params: list[torch.Tensor], names_by_id: dict) -> None:
    first = params[0]
    for p in params:
        if p.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"parameter '{names_by_id[id(p)]}' is {p.dtype}; curvops computes curvature in "
                "float32 or float64: analyse a copy, e.g. copy.deepcopy(model).float()"
            )
        if p.dtype != first.dtype or p.device != first.device:
            raise ValueError(
                f"parameters mix dtypes/devices ({first.dtype} on {first.device} vs {p.dtype} "
                f"on {p.device} for '{names_by_id[id(p)]}'): move the model with model.to(...)"
            )


def _layer_layout(model: nn.Module, chosen: list, names_by_id: dict) -> ParameterLayout:
    owner: dict[int, str] = {}
    for mod_name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), mod_name or "(root)")
    groups: dict[str, list[torch.Tensor]] = {}
    for p in chosen:
        groups.setdefault(owner[id(p)], []).append(p)
    ordered = [p for g in groups.values() for p in g]
    block_idx, start = [], 0
    for g in groups.values():
        block_idx.append(tuple(range(start, start + len(g))))
        start += len(g)
    return _layout(ordered, names_by_id, block_idx, list(groups))


def _layout(params, names_by_id, blocks, block_names) -> ParameterLayout:
    return ParameterLayout(
        params=tuple(params),
        names=tuple(names_by_id[id(p)] for p in params),
        blocks=tuple(tuple(b) for b in blocks),
        block_names=tuple(block_names),
    )


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate parameter-shaped tensors into one flat vector (P,)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, layout: ParameterLayout) -> list[torch.Tensor]:
    """Split a flat vector (P,) into views shaped like ``layout.params``."""
    return [vec[s].view_as(p) for s, p in zip(layout.slices, layout.params)]
