"""EKFAC's second data pass: E per Kronecker block in the layers' eigenbases.

Per batch, each use's inputs are rotated into the basis of A as they happen (forward hooks),
each chunk's output vectors into the basis of G; a layer's uses in a batch are
concatenated along the positions, so that the per-example gradient g_n = Σ_{u,r} b aᵀ sums
over its calls and E is the exact diagonal of its GGN block in KFAC's eigenbasis. Per
block the correction strategy is, with "auto": "lean" for a convolution with a kernel
larger than 1 (its patches are ∏k times its input: none is held, they are unfolded a few
points at a time per vector), else the per-example or the Gramian contraction, whichever
needs less memory; an embedding's is a scatter over its tokens.
"""

from __future__ import annotations

import math

import torch

from curvops.operators.kronecker.capture import BatchCollector
from curvops.operators.kronecker.correction import (
    LeanInput,
    bias_correction,
    embedding_correction,
    gramian_b,
    gramian_product,
    grouped_per_example,
    lean_correction,
    per_example_correction,
    rotate,
    rotate_grouped,
)
from curvops.operators.kronecker.hooks import Use
from curvops.operators.kronecker.layers import CONVS, augment, conv_patches
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
        bp = self.collector(batch, w, max_columns=1, on_use=self._on_use, layers_only=True)
        pending: dict[tuple[int, int], torch.Tensor] = {}
        inputs = [self._concat_parts(i, parts) for i, parts in enumerate(self._inputs)]
        for entries in bp.chunks:
            b = bt = None  # a batch may feed no Kronecker layer (fallback blocks only)
            for i, b in self._grads(bp.uses, entries).items():
                bt = None  # b in the basis of G, rotated only when a part needs it
                for j, at in enumerate(inputs[i]):
                    if isinstance(at, LeanInput):
                        self.E[i][j] += lean_correction(b, at, *self._bases_of(i))
                    elif self._is_bias(i, j):
                        self.E[i][j] += bias_correction(
                            b, self.bases[i][0][1], self.plan.layers[i].groups
                        )
                    else:
                        bt = self._rotated_b(i, b) if bt is None else bt
                        self._correct(i, j, bt, at, pending)
            del entries, b, bt  # freed before the next vector's backward pass
        for (i, j), gb in pending.items():
            self.E[i][j] += gramian_product(gb, inputs[i][j])
        self._inputs = []  # not kept into the next batch's forward pass

    def _on_use(self, use: Use) -> None:
        """In the forward pass: the use's inputs, rotated, per layer and part; then dropped."""
        for i, _, feeds_a in self.plan.layer_targets(use):
            self._inputs[i].append(self._rotated_inputs(i, use, feeds_a))
        use.drop_inputs()

    def _rotated_inputs(self, i: int, use: Use, feeds_a: bool) -> list:
        """Inputs (B, R, D₁) in the basis of A per part of layer i (a bias: ones (B, R, 1));
        an embedding keeps its ids (B, R), a lean conv its input. Grouped: (B, R, g, d₁)."""
        layer = self.plan.layers[i]
        out: list = []
        if layer.weight_param is not None and self._lean(i, use):
            assert use.x is not None
            self.strategies[self.names[i][0]] = "lean"
            out.append(LeanInput(use.x, layer.role.module, layer.joint, layer.groups))
            B, R = use.x.shape[0], math.prod(use.outputs[0].shape[2:])
        else:
            a = use.a
            assert a is not None
            B, R = a.shape[0], a.shape[1]
            if layer.weight_param is not None:
                out.append(a if layer.embedding else _rotate_inputs(layer, a, self.bases[i][1][1]))
        ones = self.E[i][0].new_ones(B, R, 1)
        if layer.bias_param is not None and not layer.joint:
            out.append(
                ones if layer.groups == 1 else ones.unsqueeze(2).expand(-1, -1, layer.groups, 1)
            )
        return out

    def _is_bias(self, i: int, j: int) -> bool:
        """Part j of layer i is a separate bias (E from Σ_r b, recorded as the strategy)."""
        layer = self.plan.layers[i]
        if layer.bias_param is None or layer.joint or j != len(self.E[i]) - 1:
            return False
        forced = self.correction in ("per_example", "gramian")
        self.strategies[self.names[i][j]] = self.correction if forced else "per_example"
        return True

    def _lean(self, i: int, use: Use) -> bool:
        """The lean correction for a conv weight with a kernel > 1 ("auto" or "lean")."""
        module = self.plan.layers[i].role.module
        if self.correction not in ("auto", "lean") or use.x is None:
            return False
        return isinstance(module, CONVS) and math.prod(module.kernel_size) > 1

    def _bases_of(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bases[i][0][1], self.bases[i][1][1]

    def _grads(self, uses: list[Use], entries: list) -> dict[int, torch.Tensor]:
        """Per layer: its uses' b on the full rows, concatenated along R."""
        parts: dict[int, list[torch.Tensor]] = {}
        for use, entry in zip(uses, entries):
            for i, rows, _ in self.plan.layer_targets(use):
                parts.setdefault(i, []).append(self._full_rows(i, entry, rows))
        return {i: ps[0] if len(ps) == 1 else torch.cat(ps, dim=2) for i, ps in parts.items()}

    def _full_rows(self, i: int, b: torch.Tensor, rows: slice) -> torch.Tensor:
        if rows == slice(None):
            return b
        full = b.new_zeros(*b.shape[:3], self.plan.layers[i].out_dim)
        full[..., rows] = b
        return full

    def _rotated_b(self, i: int, b: torch.Tensor) -> torch.Tensor:
        layer, Q = self.plan.layers[i], self.bases[i][0][1]
        return rotate_grouped(b, Q) if layer.groups > 1 else rotate(b, Q)

    def _concat_parts(self, i: int, per_use: list[list]) -> list:
        """Per part, the uses' tensors concatenated along the positions (axis 1); the lean
        inputs of a layer called several times are unfolded and rotated after all."""
        if len(per_use) <= 1:
            return per_use[0] if per_use else []
        layer, basis_a = self.plan.layers[i], self.bases[i][1]
        Q = basis_a[1] if basis_a is not None else None  # None: a bias-only layer, no lean part
        rotated = [
            [
                _rotate_inputs(layer, conv_patches(p.module, p.x), Q)  # type: ignore[arg-type]
                if isinstance(p, LeanInput)
                else p
                for p in parts
            ]
            for parts in per_use
        ]
        return [torch.cat(ts, dim=1) for ts in zip(*rotated)]

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
        strategy = "per_example" if self.correction == "lean" else self.correction
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
