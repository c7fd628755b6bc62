"""One pass over the data: every layer's factor sums and every fallback block's sums.

Per batch: a forward pass with hooks (each use's inputs go to its layers' A as it happens
and are dropped unless a fallback block needs them), then one backward per output vector
(each use's b to its layers' G and, through per-example products, to the fallback blocks).
Before the first batch, a few of its points check that the uses account for every
parameter's gradient (``accounting``). forward-only has no vectors: G = I, and a fallback block is fed by the
unit vectors at its uses' outputs (Σ Jᵀ J / (N R)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvops.core.data import Batch
from curvops.operators.kronecker.accounting import check_batch
from curvops.operators.kronecker.capture import BatchCollector
from curvops.operators.kronecker.factors import LayerSums
from curvops.operators.kronecker.fallback import (
    FallbackSums,
    positions,
    unit_cotangents,
    use_grads,
)
from curvops.operators.kronecker.hooks import Use
from curvops.operators.kronecker.norms import closed_form
from curvops.operators.kronecker.tying import Plan

STACK = 64  # output vectors stacked per vector-Jacobian batch of a fallback block


@dataclass
class Route:
    """Per use of a batch: (layer, rows, feeds A) it feeds, its fallback blocks, their
    parameters by id, and whether its vectors wait for ``_flush`` (a block of the use has
    vmapped products: stacked, so that all of the block's uses see the same vectors)."""

    layers: list[tuple[int, slice, bool]]
    blocks: list[int]
    wanted: dict[int, torch.Tensor]
    waits: bool


class FactorPass:
    """Sums of one data pass: ``layers`` (LayerSums per layer), ``fallbacks`` (per block)."""

    def __init__(
        self,
        plan: Plan,
        collector: BatchCollector,
        approx: str,
        forward_only: bool,
        params: list[torch.Tensor],
        names: list[str],
    ) -> None:
        self.plan, self.collector, self.approx = plan, collector, approx
        self.forward_only = forward_only
        self.params, self.names = params, names
        like = params[0]
        self.layers = [LayerSums(lay, like, forward_only) for lay in plan.layers]
        self.fallbacks = [FallbackSums(fb, like) for fb in plan.fallbacks]
        self._pending: dict[int, list] = {}  # use index -> its waiting chunk entries
        self._stacked = 0

    def run(self, batches, weight: Callable[[Batch], float]) -> None:
        checked = False
        for batch in batches:
            if not checked:
                check_batch(self.collector, batch, self.params, self.names)
                checked = True
            self._batch(batch, weight(batch))

    def _batch(self, batch: Batch, w: float) -> None:
        """One batch (its graph dies on return, before the next forward pass)."""
        bp = self.collector(batch, w, max_columns=1, on_use=self._on_use)
        vmapped = {
            j
            for use in bp.uses
            if use.role is None and not closed_form(use.module)
            for j in self.plan.fallback_targets(use)
        }  # blocks with a module whose products are vmapped: all their uses' vectors wait
        routes = [self._route(use, vmapped) for use in bp.uses]
        for entries in bp.chunks:
            self._add_chunk(bp.uses, routes, entries)
            del entries  # freed before the next vector's backward pass
        self._flush(bp.uses)
        if self.forward_only:
            self._add_units(bp.uses)

    def _route(self, use: Use, vmapped: set[int]) -> Route:
        """Where a use's output vectors go, found once per batch (not per vector)."""
        blocks = self.plan.fallback_targets(use)
        wanted = {pid: p for j in blocks for pid, p in self.fallbacks[j].params.items()}
        waits = any(j in vmapped for j in blocks)
        return Route(self.plan.layer_targets(use), blocks, wanted, waits)

    def _on_use(self, use: Use) -> None:
        """In the forward pass: the inputs into A, then dropped unless still needed."""
        if use.role is not None:
            for i, _, feeds_a in self.plan.layer_targets(use):
                if feeds_a:
                    self.layers[i].add_inputs(use, self.approx)
        if not self.plan.fallback_targets(use):
            use.drop_inputs()

    def _add_chunk(self, uses: list[Use], routes: list[Route], entries: list) -> None:
        """One vector: b into the layers' G and the fallback blocks (summed over a block's
        uses per point); the entries of vmapped modules wait for ``_flush``."""
        per_block: dict[int, list[dict]] = {}
        for k, (use, route, entry) in enumerate(zip(uses, routes, entries)):
            for i, rows, _ in route.layers:
                self.layers[i].add_grads(entry, rows, self.approx)
            if route.waits:
                self._pending.setdefault(k, []).append(entry)
            elif route.blocks:  # one product for all of the use's blocks
                grads = use_grads(use, entry, route.wanted)
                for j in route.blocks:
                    per_block.setdefault(j, []).append(grads)
        for j, grads in per_block.items():
            self.fallbacks[j].add(grads)
        self._stacked += 1
        if self._stacked >= STACK:
            self._flush(uses)

    def _flush(self, uses: list[Use]) -> None:
        """The waiting vectors of each fallback use, stacked: one vector-Jacobian batch per
        use for all of them (summed over the uses of a block per point and vector)."""
        per_block: dict[int, list[dict]] = {}
        for k, entries in self._pending.items():
            use = uses[k]
            stacked: list[torch.Tensor] | torch.Tensor = (
                [torch.cat(gs, dim=0) for gs in zip(*entries)]
                if use.role is None
                else torch.cat(entries, dim=0)
            )
            for j in self.plan.fallback_targets(use):
                grads = use_grads(use, stacked, self.fallbacks[j].params)
                per_block.setdefault(j, []).append(grads)
        for j, grads in per_block.items():
            self.fallbacks[j].add(grads)
        self._pending, self._stacked = {}, 0

    def _add_units(self, uses: list[Use]) -> None:
        """forward-only: every unit vector at each use's outputs, one use at a time."""
        for use in uses:
            targets = self.plan.fallback_targets(use)
            if not targets:
                continue
            for units in unit_cotangents(use.outputs):
                entry = use.layout(units[0]) if use.layout is not None else units
                for j in targets:
                    self.fallbacks[j].add([use_grads(use, entry, self.fallbacks[j].params)])
            B = use.outputs[0].shape[0]
            for j in targets:
                self.fallbacks[j].count += B * positions(use)
