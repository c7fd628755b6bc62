"""Forward hooks: every call ("use") of a layer or fallback module in one forward pass.

A use of a Kronecker layer records its inputs a (B, R, D₁) (an embedding's token ids
(B, R)) and its output, whose gradients b (K, B, R, D₂) are taken later; a use of any other
module (a fallback block's owner: a norm layer, a custom module) records its arguments and
outputs, for per-example vector-Jacobian products. An output is kept as its place in the
graph (``Output``: its gradient edge, shape, dtype, device), not as the tensor, which
autograd frees unless a backward node saves it (a CNN's conv outputs: 12 MiB a batch). The
recorded outputs go on unchanged (no copy of every activation) unless the model modifies
one in place later (``nn.ReLU(inplace=True)`` after a layer), which ``modified()`` tells
from the tensors' version counters (held until ``take_uses``); a capture with
``clone=True`` passes clones on instead. A module called with an input of
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
from torch.autograd.graph import GradientEdge, get_gradient_edge

from curvops.operators.kronecker.functional import FunctionalLinears
from curvops.operators.kronecker.layers import CONVS, Role, output_grads, role_inputs


@dataclass(frozen=True, eq=False)
class Output:
    """A recorded output without its data: ``edge`` (autograd's gradient edge, None when it
    needs no gradient: its gradient is 0), ``shape``, ``dtype``, ``device``."""

    edge: GradientEdge | None
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, t: torch.Tensor) -> Output:
        edge = get_gradient_edge(t) if t.requires_grad else None
        return cls(edge, t.shape, t.dtype, t.device)

    def zeros(self, *lead: int) -> torch.Tensor:
        """Zeros (*lead, *shape): the gradient of an output f does not depend on."""
        return torch.zeros(*lead, *self.shape, dtype=self.dtype, device=self.device)


@dataclass(eq=False)
class Use:
    """One call: ``role`` (None for a fallback module), ``rows`` (id(param) -> the rows of
    it the call uses), ``outputs`` (``Output``), ``layout`` (their gradients -> b (K, B, R,
    D₂ᵤ)); its inputs ``a`` (B, R, D₁) come from ``x`` (the layer's input, which autograd
    keeps anyway) on first access — conv patches are only unfolded when asked for — until
    ``drop_inputs``. A fallback module's call keeps ``module``, ``args``, ``kwargs``."""

    role: Role | None
    rows: dict[int, slice]
    x: torch.Tensor | None
    outputs: list[Output]
    layout: Callable[[torch.Tensor], torch.Tensor] | None = None
    module: nn.Module | None = None
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    positions: tuple[int, ...] | None = None  # the recorded items of a tuple output
    xhat: torch.Tensor | None = None  # a norm layer's normalised input (``norms``), cached
    batch: int = 0
    _a: torch.Tensor | None = None

    @property
    def a(self) -> torch.Tensor | None:
        """(B, R, D₁) inputs (token ids (B, R) for an embedding), computed once from x."""
        if self._a is None and self.x is not None and self.role is not None:
            self._a = role_inputs(self.role, self.x, self.batch)
        return self._a

    @property
    def has_inputs(self) -> bool:
        """Whether ``a`` is computed already."""
        return self._a is not None

    def drop_inputs(self) -> None:
        self._a = self.x = None


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

    def __init__(
        self,
        sites: Sites,
        batch: int,
        on_use: Callable[[Use], None] | None = None,
        clone: bool = False,
    ) -> None:
        """``uses`` is handed over by ``take_uses`` (the capture keeps no tensors after)."""
        self.sites, self.batch, self.on_use, self.clone = sites, batch, on_use, clone
        self.uses: list[Use] = []
        self._versions: list[tuple[torch.Tensor, int]] = []
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

    def take_uses(self) -> list[Use]:
        """The recorded uses; the capture forgets them and the outputs it watched (it refers
        to itself through its hooks: a cycle holding a batch's graph would outlive the batch).
        Ask ``modified()`` first."""
        uses, self.uses, self.on_use, self._versions = self.uses, [], None, []
        return uses

    def modified(self) -> bool:
        """Whether a recorded output was modified in place after its call (its gradient
        would then be the modified tensor's): the forward pass needs ``clone=True``."""
        return any(t._version != v for t, v in self._versions)

    def _go_on(self, t: torch.Tensor) -> torch.Tensor:
        """The tensor the model goes on with: ``t`` itself (its version noted) or a clone."""
        if self.clone:
            return t.clone()
        self._versions.append((t, t._version))
        return t

    def _add(self, use: Use) -> None:
        self.uses.append(use)
        if self.on_use is not None:
            self.on_use(use)

    # ---------------------------------------------------------------- Kronecker layers
    def _layer_hook(self, role: Role) -> Callable:
        batch = self.batch

        def layout(g: torch.Tensor) -> torch.Tensor:  # no reference to self: no cycle
            return output_grads(role, g, batch)

        def fn(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            x, output = self._batched(module, x.detach(), output)
            rows = {id(p): slice(None) for p in role.params()}
            self._add(Use(role, rows, x, [Output.of(output)], layout, batch=self.batch))
            return self._go_on(output)

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
        self._add(Use(role, rows, None, [Output.of(out)], layout, _a=a))
        return self._go_on(out)

    # ---------------------------------------------------------------- fallback modules
    def _fallback_hook(self, module, args, kwargs, output):
        outputs, rebuilt, positions = _tensor_outputs(module, output, self.batch, self._go_on)
        recorded = [Output.of(o) for o in outputs]
        use = Use(None, {}, None, recorded, module=module, positions=positions)
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


def _tensor_outputs(module: nn.Module, output, batch: int, go_on: Callable):
    """([recorded tensors], the output to go on with (same structure, ``go_on`` of each
    recorded tensor), the positions of the recorded items in a tuple output (None: a tensor
    output))."""
    if isinstance(output, torch.Tensor):
        out = output.expand(batch, *output.shape[1:]) if output.shape[:1] == (1,) else output
        return [out], go_on(out), None
    if type(output) in (list, tuple):
        recorded, rebuilt, positions = [], [], []
        for i, item in enumerate(output):
            if isinstance(item, torch.Tensor) and item.requires_grad and item.ndim:
                recorded.append(item)
                rebuilt.append(go_on(item))
                positions.append(i)
            else:
                rebuilt.append(item)
        return recorded, type(output)(rebuilt), tuple(positions)
    raise ValueError(
        f"module {type(module).__name__} returns a {type(output).__name__}: curvops computes "
        "the block of the parameters it owns from per-example vector-Jacobian products of its "
        "output, which must be a tensor or a tuple of tensors. Pass params= without them"
    )
