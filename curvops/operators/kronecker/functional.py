"""nn.MultiheadAttention's projections, captured inside its forward, where they are functional.

MHA hands in_proj_weight and out_proj.weight to ``F.multi_head_attention_forward``, which
multiplies them with ``F.linear``: the forward hooks of ``out_proj`` never fire (pinned by
a test). During an MHA call, the name ``torch.nn.functional.linear`` — looked up there at
call time — is wrapped; a call whose weight is a tracked parameter or a row slice of one
(``w.split`` / ``w.chunk`` for cross-attention) is recorded as a use of that parameter's
rows. Inside, tensors are sequence-first: in-projection inputs (L, N, E), out-projection
inputs (L·N, E) with row l·N + n; both are turned into (N, L, E). The wrapper is installed
only while a capture is active, and always restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from curvops.operators.kronecker.layers import Role

Record = Callable[..., torch.Tensor]  # (role, a, out, layout, rows) -> the output to go on with


class FunctionalLinears:
    """Records the F.linear calls of tracked parameters inside MHA forwards.

    ``roles``: role per tracked parameter (weight or bias), keyed by storage address.
    """

    def __init__(self, roles: list[Role], record: Record) -> None:
        self.record = record
        self.tracked: dict[int, tuple[torch.Tensor, Role]] = {}
        for role in roles:
            for p in role.params():
                self.tracked.setdefault(p.untyped_storage().data_ptr(), (p, role))
        self.batch_sizes: list[int] = []  # of the MHA calls in progress

    def pre_hook(self, module: nn.Module, args, kwargs) -> None:
        query = args[0] if args else kwargs["query"]
        batch_first = getattr(module, "batch_first", False)
        self.batch_sizes.append(1 if query.ndim < 3 else query.shape[0 if batch_first else 1])

    def post_hook(self, module: nn.Module, args, kwargs, output) -> None:
        self.batch_sizes.pop()

    @contextmanager
    def installed(self) -> Iterator[None]:
        original = F.linear

        def linear(x, weight, bias=None):
            out = original(x, weight, bias)
            if not self.batch_sizes:
                return out
            return self._maybe_record(x, weight, bias, out)

        F.linear = linear
        try:
            yield
        finally:
            F.linear = original
            self.batch_sizes.clear()

    def _maybe_record(self, x, weight, bias, out) -> torch.Tensor:
        found = self._find(weight)
        if found is None:
            return out
        (param, role), w_rows = found
        rows = {id(param): w_rows}
        b_found = self._find(bias) if bias is not None else None
        if b_found is not None:
            rows[id(b_found[0][0])] = b_found[1]
        a, layout = _batch_first(x.detach(), self.batch_sizes[-1])
        return self.record(role, a, out, layout, rows)

    def _find(self, t: torch.Tensor) -> tuple[tuple[torch.Tensor, Role], slice] | None:
        """(its parameter and role, the rows of the parameter it is) or None."""
        entry = self.tracked.get(t.untyped_storage().data_ptr())
        if entry is None:
            return None
        param = entry[0]
        if t.ndim != param.ndim or t.stride() != param.stride():
            return None
        start = (t.storage_offset() - param.storage_offset()) // param.stride(0)
        return entry, slice(start, start + t.shape[0])


def _batch_first(x: torch.Tensor, N: int):
    """Sequence-first inputs -> (N, L, E), and the matching layout of the output grads."""
    if x.ndim == 3:
        return x.transpose(0, 1), lambda g: g.transpose(1, 2)
    L = x.shape[0] // N
    a = x.reshape(L, N, x.shape[-1]).transpose(0, 1)
    return a, lambda g: g.reshape(g.shape[0], L, N, g.shape[-1]).transpose(1, 2)
