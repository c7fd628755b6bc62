"""A batch's model output with its autograd graph, for the GGN's J V and Jᵀ U.

Jᵀ U is a backward through the graph. J V comes either from forward mode (the caller's
``torch.func.jvp``, which recomputes the forward pass) or, in reverse mode, from the graph
of Jᵀu built once with ``create_graph`` at u = 0: Jᵀu is linear in u, so
∇_u ⟨Jᵀu, v⟩ = J v is one more backward, and no forward pass is needed while it is cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvops.operators.exact.autograd import batched_grad


class OutputGraph:
    """``f`` (B, ...) with its graph; in reverse mode also u0 and Jᵀu0 with theirs."""

    def __init__(self, f: torch.Tensor, u0: torch.Tensor | None, vjp: tuple | None) -> None:
        self.f, self.u0, self.vjp = f, u0, vjp
        self.reverse = vjp is not None

    @classmethod
    def build(cls, f: torch.Tensor, params: Sequence[torch.Tensor], reverse: bool) -> OutputGraph:
        graph = cls(f, None, None)
        if reverse:
            graph.enable_reverse(params)
        return graph

    def enable_reverse(self, params: Sequence[torch.Tensor]) -> None:
        """Add u0 and Jᵀu0 with their graphs (reverse-mode J v from now on)."""
        if self.vjp is None:
            self.u0 = torch.zeros_like(self.f, requires_grad=True)
            with torch.enable_grad():
                self.vjp = torch.autograd.grad(
                    self.f, params, self.u0, create_graph=True, allow_unused=True
                )
        self.reverse = True

    def jacobian_matmat(self, block: list[int], vs: list[torch.Tensor], step: int) -> torch.Tensor:
        """J_b V_b (k, *f.shape) for the parameters ``block`` (indices) and their vs."""
        assert self.vjp is not None and self.u0 is not None, "call enable_reverse first"
        vjp = self.vjp
        pairs = [
            (vjp[i], v) for i, v in zip(block, vs) if vjp[i] is not None and vjp[i].requires_grad
        ]
        if not pairs:
            return self.f.new_zeros(vs[0].shape[0], *self.f.shape)
        gs, vv = [g for g, _ in pairs], [v for _, v in pairs]
        return batched_grad(gs, [self.u0], vv, step)[0]

    def transpose_matmat(
        self, params: list[torch.Tensor], U: torch.Tensor, step: int
    ) -> list[torch.Tensor]:
        """Jᵀ U for each column of U (k, *f.shape): (k, *p.shape) per parameter."""
        return batched_grad([self.f], params, [U], step)
