"""Forward hooks: every call ("use") of a layer or fallback module in one forward pass.

A use of a Kronecker layer records its inputs a (B, R, D₁) (an embedding's token ids
(B, R)) and its output, whose gradients b (K, B, R, D₂) are taken later; a use of any other
module (a fallback block's owner: a norm layer, a custom module) records its arguments and
outputs, for per-example vector-Jacobian products. Outputs are replaced by clones, so later
in-place operations cannot change the recorded ones. A module called with an input of
leading size 1 in a batch of B (position ids shared by the batch) has its output expanded
to B, so that every data point gets its own output gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from curvops.operators.kronecker.functional import FunctionalLinears
from curvops.operators.kronecker.layers import CONVS, Role, output_grads, role_inputs


@dataclass(eq=False)
class Use:
    """One call: ``role`` (None for a fallback module), ``rows`` (id(param) -> the rows of
    it the call uses), ``a`` (inputs; None once handed over), ``outputs`` (graph nodes),
    ``layout`` (their gradients -> b (K, B, R, D₂ᵤ)); a fallback module's call keeps
    ``module``, ``args`` and ``kwargs`` (detached)."""

    role: Role | None
    rows: dict[int, slice]
    a: torch.Tensor | None
    outputs: list[torch.Tensor]
    layout: Callable[[torch.Tensor], torch.Tensor] | None = None
    module: nn.Module | None = None
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    positions: tuple[int, ...] | None = None  # the recorded items of a tuple output


@dataclass
class Sites:
    """What to hook: Kronecker layers (module, role), MHA modules, fallback modules."""

    layers: list[tuple[nn.Module, Role]]
    attention: list[nn.Module]
    functional: list[Role]  # roles applied inside MHA calls (in_proj, out_proj)
    fallback: list[nn.Module]


class Capture:
    """Records the uses of one forward pass of a batch of ``batch`` points; ``on_use(use)``
    sees each use as it happens (and may drop its inputs)."""

    def __init__(self, sites: Sites, batch: int, on_use: Callable[[Use], None] | None = None):
        self.sites, self.batch, self.on_use = sites, batch, on_use
        self.uses: list[Use] = []
        self.functional = FunctionalLinears(sites.functional, self._record_functional)

    @contextmanager
    def active(self) -> Iterator[Capture]:
        with ExitStack() as stack:
            for module, role in self.sites.layers:
                hook = module.register_forward_hook(self._layer_hook(role), with_kwargs=True)
                stack.callback(hook.remove)
            for module in self.sites.attention:
                pre = module.register_forward_pre_hook(self.functional.pre_hook, with_kwargs=True)
                post = module.register_forward_hook(self.functional.post_hook, with_kwargs=True)
                stack.callback(pre.remove)
                stack.callback(post.remove)
            for module in self.sites.fallback:
                hook = module.register_forward_hook(self._fallback_hook, with_kwargs=True)
                stack.callback(hook.remove)
            if self.sites.attention:
                stack.enter_context(self.functional.installed())
            yield self

    def _add(self, use: Use) -> None:
        self.uses.append(use)
        if self.on_use is not None:
            self.on_use(use)

    # ---------------------------------------------------------------- Kronecker layers
    def _layer_hook(self, role: Role) -> Callable:
        def fn(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            x, output = self._batched(module, x.detach(), output)
            a = role_inputs(role, x, self.batch)
            rows = {id(p): slice(None) for p in role.params()}
            layout = lambda g, role=role: output_grads(role, g, self.batch)  # noqa: E731
            self._add(Use(role, rows, a, [output], layout))
            return output.clone()

        return fn

    def _batched(self, module: nn.Module, x: torch.Tensor, out: torch.Tensor):
        """(x, out) with a leading size of B: a shared input (leading size 1) expanded."""
        B, lead = self.batch, x.shape[0] if x.ndim else 0
        if lead == B or (lead and lead % B == 0 and not isinstance(module, CONVS)):
            return x, out  # (m·B, ...): m rows per point, batch-major
        if lead == 1:
            return x.expand(B, *x.shape[1:]), out.expand(B, *out.shape[1:])
        raise ValueError(
            f"{type(module).__name__} was called on an input of shape {tuple(x.shape)} in a "
            f"batch of {B} points: KFAC needs the batch on the leading axis of every layer's "
            "input (or a leading size of 1 for an input shared by the batch)"
        )

    def _record_functional(self, role: Role, a, out, layout, rows) -> torch.Tensor:
        self._add(Use(role, rows, a, [out], layout))
        return out.clone()

    # ---------------------------------------------------------------- fallback modules
    def _fallback_hook(self, module, args, kwargs, output):
        outputs, rebuilt, positions = _tensor_outputs(module, output, self.batch)
        use = Use(None, {}, None, outputs, module=module, positions=positions)
        use.args, use.kwargs = _detached(args), _detached(kwargs)
        self._add(use)
        return rebuilt


def _detached(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached(v) for v in obj)
    return obj


def _tensor_outputs(module: nn.Module, output, batch: int):
    """([recorded tensors], the output to go on with (clones, same structure), the positions
    of the recorded items in a tuple output (None: a tensor output))."""
    if isinstance(output, torch.Tensor):
        out = output.expand(batch, *output.shape[1:]) if output.shape[:1] == (1,) else output
        return [out], out.clone(), None
    if type(output) in (list, tuple):
        recorded, rebuilt, positions = [], [], []
        for i, item in enumerate(output):
            if isinstance(item, torch.Tensor) and item.requires_grad and item.ndim:
                recorded.append(item)
                rebuilt.append(item.clone())
                positions.append(i)
            else:
                rebuilt.append(item)
        return recorded, type(output)(rebuilt), tuple(positions)
    raise ValueError(
        f"module {type(module).__name__} returns a {type(output).__name__}: curvops computes "
        "the block of the parameters it owns from per-example vector-Jacobian products of its "
        "output, which must be a tensor or a tuple of tensors. Pass params= without them"
    )
