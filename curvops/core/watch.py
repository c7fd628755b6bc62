"""One way to notice that a model changed: ``ModelWatch.token()`` and token equality.

A token fingerprints everything a module tree computes with, so two equal tokens mean the
same function (up to the limits below):
  structure  per module: its identity and type, train/eval mode, the identities of its
             children, parameters and buffers, its forward / backward hooks, and its plain
             attributes (numbers, strings, tuples, dtypes; callables and other objects by
             identity); plus torch's global module hooks.
  values     per parameter, buffer and tensor attribute: version counter, storage, shape,
             dtype, and four numbers (Σ|x|, ‖x‖, Σx, Σ x_i x_{i+1}) that catch edits made
             through ``.data``, which bypass the version counter (a sign flip, a shuffle).
What it cannot see: changes inside attribute objects that are not modules or tensors
(e.g. an edited ``config`` object of a Hugging Face model) and global state read in
``forward``. Cost: one walk of the module tree and O(P) reads, no copy of the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as _module_mod

_SKIP = {"_parameters", "_buffers", "_modules", "training", "_non_persistent_buffers_set"}
_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


@dataclass(frozen=True)
class Token:
    """A fingerprint of a model at one moment; compare two with ``==``."""

    structure: tuple
    tensors: tuple
    values: torch.Tensor

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Token):
            return NotImplemented
        if self.structure != other.structure or self.tensors != other.tensors:
            return False
        a, b = self.values, other.values
        return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())

    __hash__ = None  # type: ignore[assignment]


class ModelWatch:
    """Fingerprints ``model`` on demand; ``token()`` now, compare tokens to detect a change."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def token(self) -> Token:
        structure, attr_tensors = _structure(self.model)
        tensors = [
            t.detach() for t in (*self.model.parameters(), *self.model.buffers(), *attr_tensors)
        ]
        ids = tuple((t._version, t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors)
        return Token(structure, ids, _values(tensors))


def _structure(model: nn.Module) -> tuple[tuple, list[torch.Tensor]]:
    """The structural part of a token, and the tensors held as plain module attributes."""
    rows: list[tuple] = []
    attr_tensors: list[torch.Tensor] = []
    for name, module in model.named_modules(remove_duplicate=False):
        attrs: list[tuple[str, object]] = []
        for key, value in sorted(vars(module).items()):
            if key in _SKIP or key in _HOOKS:
                continue
            if isinstance(value, torch.Tensor):
                attr_tensors.append(value)
                attrs.append((key, "tensor"))
            else:
                attrs.append((key, _plain(value)))
        rows.append(
            (
                name,
                id(module),
                type(module),
                module.training,
                tuple((k, id(v)) for k, v in module._modules.items()),
                tuple((k, id(v)) for k, v in module._parameters.items()),
                tuple((k, id(v)) for k, v in module._buffers.items()),
                tuple(_hook_ids(getattr(module, h, None)) for h in _HOOKS),
                tuple(attrs),
            )
        )
    global_hooks = tuple(_hook_ids(getattr(_module_mod, h, None)) for h in _GLOBAL_HOOKS)
    return (tuple(rows), global_hooks), attr_tensors


def _plain(value: object) -> object:
    """A comparable stand-in: the value itself for plain data, else the object's identity."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value):
        return (type(value), tuple(value))
    if isinstance(value, torch.Size):
        return tuple(value)
    return ("id", id(value))


def _hook_ids(hooks: object) -> tuple:
    if not hooks:
        return ()
    return tuple((k, id(v)) for k, v in hooks.items())  # type: ignore[attr-defined]


@torch.no_grad()
def _values(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(4 · n,) float64: Σ|x|, ‖x‖, Σx and Σ x_i x_{i+1} per tensor, on the first's device."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    device = tensors[0].device
    flats = [_real_flat(t) for t in tensors]
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(flats):  # foreach kernels need one dtype and device per call
        groups.setdefault((f.dtype, f.device), []).append(i)
    stats: list[torch.Tensor | None] = [None] * len(flats)
    for members in groups.values():
        fs = [flats[i] for i in members]
        l1, l2 = torch._foreach_norm(fs, 1), torch._foreach_norm(fs, 2)
        for i, f, a, b in zip(members, fs, l1, l2):
            lag = torch.dot(f[1:], f[:-1]) if f.numel() > 1 else f.new_zeros(())
            stats[i] = torch.stack([a, b, f.sum(), lag]).to(device=device, dtype=torch.float64)
    return torch.cat([s for s in stats if s is not None])


def _real_flat(t: torch.Tensor) -> torch.Tensor:
    """t as a flat real floating-point vector (a view where possible)."""
    flat = t.reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    return flat if flat.is_floating_point() else flat.to(torch.float64)
