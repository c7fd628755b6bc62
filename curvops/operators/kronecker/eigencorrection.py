"""EKFAC's second data pass: E per Kronecker block in the layers' eigenbases.

Per batch, each use's inputs are rotated into the basis of A as they happen (forward hooks),
each chunk's output vectors into the basis of G; a layer's uses in a batch are
concatenated along the positions, so that the per-example gradient g_n = Σ_{u,r} b aᵀ sums
over its calls and E is the exact diagonal of its GGN block in KFAC's eigenbasis. Per
block, the correction strategy is the per-example or the Gramian contraction (whichever
needs less memory, or the one asked for); an embedding's is a scatter over its tokens.
"""

from __future__ import annotations

import torch

from curvops.operators.kronecker.capture import BatchCollector
from curvops.operators.kronecker.correction import (
    embedding_correction,
    gramian_b,
    gramian_product,
    grouped_per_example,
    per_example_correction,
    rotate,
    rotate_grouped,
)
from curvops.operators.kronecker.hooks import Use
from curvops.operators.kronecker.layers import augment
from curvops.operators.kronecker.tying import Layer, Plan


class CorrectionPass:
    """Σ over the data of E per layer and block part (weight or joint, then a bias)."""

    def __init__(
        self,
        plan: Plan,
        collector: BatchCollector,
        bases: list[tuple],
        shapes: list[list[tuple[int, ...]]],
        correction: str,
        names: list[list[str]],
        like: torch.Tensor,
    ) -> None:
        self.plan, self.collector, self.bases, self.correction = plan, collector, bases, correction
        self.names = names
        self.E = [[like.new_zeros(shape) for shape in parts] for parts in shapes]
        self.strategies: dict[str, str] = {}
        self._inputs: list[list[list[torch.Tensor]]] = []

    def run(self, batches, weight) -> list[list[torch.Tensor]]:
        for batch in batches:
            self._batch(batch, weight(batch))
        return self.E

    def _batch(self, batch, w: float) -> None:
        """One output vector at a time (no stacked copies); a Gramian block sums Σ_k bt bt
        over the batch's vectors first, then takes one product."""
        self._inputs = [[] for _ in self.plan.layers]
        bp = self.collector(batch, w, max_columns=1, on_use=self._on_use)
        pending: dict[tuple[int, int], torch.Tensor] = {}
        inputs = [_concat_parts(parts) for parts in self._inputs]
        for entries in bp.chunks:
            rotated = self._rotated_grads(bp.uses, entries)
            for i, bt in rotated.items():
                for j, at in enumerate(inputs[i]):
                    self._correct(i, j, bt, at, pending)
        for (i, j), gb in pending.items():
            self.E[i][j] += gramian_product(gb, inputs[i][j])

    def _on_use(self, use: Use) -> None:
        """In the forward pass: the use's inputs, rotated, per layer and part; then dropped."""
        for i, _, feeds_a in self.plan.layer_targets(use):
            self._inputs[i].append(self._rotated_inputs(i, use, feeds_a))
        use.a = None

    def _rotated_inputs(self, i: int, use: Use, feeds_a: bool) -> list[torch.Tensor]:
        """Inputs (B, R, D₁) in the basis of A per part of layer i (a bias: ones (B, R, 1));
        an embedding keeps its ids (B, R). Grouped: (B, R, g, d₁)."""
        layer, a = self.plan.layers[i], use.a
        assert a is not None
        ones = a.new_ones(a.shape[0], a.shape[1], 1, dtype=self.E[i][0].dtype)
        out = []
        if layer.weight_param is not None:
            if layer.embedding:
                out.append(a)
            else:
                out.append(_rotate_inputs(layer, a, self.bases[i][1][1]))
        if layer.bias_param is not None and not layer.joint:
            out.append(ones if layer.groups == 1 else ones.unsqueeze(2).expand(-1, -1, layer.groups, 1))
        return out

    def _rotated_grads(self, uses: list[Use], entries: list) -> dict[int, torch.Tensor]:
        """Per layer: its uses' b, on the full rows, in the basis of G, concatenated along R."""
        parts: dict[int, list[torch.Tensor]] = {}
        for use, entry in zip(uses, entries):
            for i, rows, _ in self.plan.layer_targets(use):
                parts.setdefault(i, []).append(self._rotated_b(i, entry, rows))
        return {i: ps[0] if len(ps) == 1 else torch.cat(ps, dim=2) for i, ps in parts.items()}

    def _rotated_b(self, i: int, b: torch.Tensor, rows: slice) -> torch.Tensor:
        layer, Q = self.plan.layers[i], self.bases[i][0][1]
        if rows != slice(None):
            full = b.new_zeros(*b.shape[:3], layer.out_dim)
            full[..., rows] = b
            b = full
        return rotate_grouped(b, Q) if layer.groups > 1 else rotate(b, Q)

    def _correct(self, i: int, j: int, bt, at, pending) -> None:
        layer, name = self.plan.layers[i], self.names[i][j]
        if layer.embedding and j == 0:
            self.strategies[name] = "scatter"
            padding = getattr(layer.role.module, "padding_idx", None)
            self.E[i][j] += embedding_correction(bt, at, layer.role.cols, padding)
            return
        strategy = self._strategy(name, bt, at)
        if strategy == "gramian":
            gb = gramian_b(bt)
            pending[i, j] = pending[i, j] + gb if (i, j) in pending else gb
        elif bt.ndim == 5:
            self.E[i][j] += grouped_per_example(bt, at)
        else:
            self.E[i][j] += per_example_correction(bt, at)

    def _strategy(self, name: str, bt: torch.Tensor, at: torch.Tensor) -> str:
        """The block's correction strategy (recorded in ``self.strategies``)."""
        R, D1, D2 = at.shape[1], at.shape[-1], bt.shape[-1]
        strategy = self.correction
        if strategy == "auto":
            strategy = "gramian" if R * R * (D1 + D2) < D1 * D2 else "per_example"
        self.strategies[name] = strategy
        return strategy


def _rotate_inputs(layer: Layer, a: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """a (B, R, D₁) (+ the bias column when joint) in the basis of A; grouped per group."""
    if layer.groups == 1:
        return (augment(a) if layer.joint else a) @ Q
    ag = a.reshape(a.shape[0], a.shape[1], layer.groups, -1)
    ag = augment(ag) if layer.joint else ag
    return torch.einsum("brgi,gij->brgj", ag, Q)


def _concat_parts(per_use: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per part, the uses' tensors concatenated along the positions (axis 1)."""
    if not per_use:
        return []
    if len(per_use) == 1:
        return per_use[0]
    return [torch.cat(ts, dim=1) for ts in zip(*per_use)]
