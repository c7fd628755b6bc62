"""KFACOperator: Kronecker-factored GGN / Fisher, one G ⊗ A block per layer (or per parameter).

Per layer with inputs a (D₁) and backpropagated output vectors b (D₂), summed over its uses
(calls; see ``factors`` and ``tying``):
  expand:  A = 1/(N R) Σ_{n,r} a_nr a_nrᵀ,            G = Σ_{n,r,k} b_nrk b_nrkᵀ
  reduce:  A = 1/N Σ_n ā_n ā_nᵀ, ā_n = 1/R Σ_r a_nr,  G = Σ_{n,k} b̄_nk b̄_nkᵀ, b̄ = Σ_r b_nrk
(R positions sharing the weight: sequence tokens, conv pixels; Eschenhagen et al. 2023). The
reduction's factor c, the batch weights d_b / D and the loss terms' weights (class weights,
ignored targets: 0) live in b, so for one data point, a deep linear network, one Linear
layer under MSE, or one input shared by every point, type-2 KFAC is the block-diagonal GGN.
Every other parameter gets a fallback block: its exact GGN / Fisher block or its diagonal.
"""

from __future__ import annotations

import torch

from curvops.core import checks
from curvops.distributed import all_reduce_sum_many
from curvops.operators.kronecker.accumulate import FactorPass
from curvops.operators.kronecker.algebra import KroneckerBlock, SymFactor, View
from curvops.operators.kronecker.factors import gram
from curvops.operators.kronecker.operator import KroneckerOperator
from curvops.operators.kronecker.tying import Layer

__all__ = ["KFACOperator", "gram"]


class KFACOperator(KroneckerOperator):
    """KFAC of the whole-data loss (P, P): block-diagonal, each block G ⊗ A (or a fallback
    block), PSD.

    Args:
        model, loss_fn, data: as for every operator; any model: the layers of
            ``layers.KRONECKER_LAYERS`` get Kronecker blocks (summed over their calls, weight
            tying included), every other parameter a fallback block (see ``fallback``).
        fisher: "type2" (exact output Hessian through its square root), "mc" (``mc_samples``
            sampled labels per point, seeded by ``seed`` and the batch content), "empirical",
            or "forward-only" (G = I: the input factors alone, no backward pass).
        approx: "expand" or "reduce" for weights shared over R positions (tokens, pixels).
        separate_weight_and_bias: one block per weight and per bias (True) or one joint block
            per layer, inputs augmented with a 1 (False).
        fallback: the blocks of the other parameters: "exact" (the exact (p, p) GGN / Fisher
            block, same fisher type), "diagonal" (its diagonal), "auto" (exact up to
            ``tying.EXACT_MAX`` entries, diagonal above) or "error" (refuse them).
        on_stale: once the model's parameters or buffers changed (an optimizer step),
            products and closed forms "raise" ``StaleOperatorError`` (the default) or
            "recompute" the factors; ``op.refresh()`` recomputes them on demand.
        chunk_size: the most columns of a matmat (or of an inverse product) multiplied at once.
        params, num_data, batch_size_fn, progress, check_deterministic, process_group: see
            ``CurvatureOperator``. With a process group all factors are summed in one
            ``all_reduce`` at construction; every rank then holds the same factors and
            computes the same eigendecompositions itself (no broadcast needed).
    ``op.structures`` says each block's structure ("kronecker", "kronecker-diagonal-A",
    "exact", "diagonal"), ``op.fallback_reasons`` why a fallback block is one. Factors are
    computed at construction (one pass over the data, K backward passes per batch: the
    output columns, C − 1 for type-2 cross-entropy over C classes);
    ``compute()`` recomputes them idempotently.
    """

    def compute(self) -> None:
        """Recompute every factor at the current parameters (replaces, never adds)."""
        run = FactorPass(
            self.plan, self._collector, self.approx, self.fisher == "forward-only",
            list(self.layout.params), list(self.layout.names),
        )  # fmt: skip
        run.run(self._loop, self._batch_weight)
        tensors = [t for s in run.layers for t in s.tensors()]
        tensors += [t for fb in run.fallbacks for t in (fb.total, fb.count)]
        flat = iter(all_reduce_sum_many(tensors, self.process_group))
        self.G, self.A, self.F = [], [], []
        for sums in run.layers:
            sums.G = next(flat)
            if sums.A is not None:
                sums.A = next(flat)
            sums.count = int(round(float(next(flat))))
            G, A = sums.finish()
            checks.check_finite(G, f"output-gradient factor G of layer '{sums.layer.name}'")
            if A is not None:
                checks.check_finite(A, f"input factor A of layer '{sums.layer.name}'")
            self.G.append(G)
            self.A.append(A)
        for fb in run.fallbacks:
            total, count = next(flat), float(next(flat))
            F = total / count if count > 0 else total  # forward-only: Σ Jᵀ J / (N R)
            checks.check_finite(F, f"fallback block of '{fb.block.name}'")
            self.F.append(F)
        self._build_blocks()
        self._mark_fresh()

    def _build_blocks(self, E: list[list[torch.Tensor]] | None = None, bases=None) -> None:
        """Blocks from G, A and F (EKFAC: eigenvalues E / bases (Q_G, Q_A) per layer)."""
        self._blocks = []
        for i, layer in enumerate(self.layers):
            G = self._factor(self.G[i], layer, bases[i][0] if bases else None)
            basis_a = bases[i][1] if bases else None
            for j, (params, A, views) in enumerate(self._layer_parts(i, layer, basis_a)):
                blk = KroneckerBlock(params, G, A, E[i][j] if E else None, views)
                self._blocks.append(blk)
        for fb, F in zip(self.fallbacks, self.F):
            G = SymFactor(F, diagonal=fb.mode == "diagonal")
            self._blocks.append(KroneckerBlock(fb.indices, G, SymFactor.one(F), exact=True))

    @staticmethod
    def _factor(G: torch.Tensor, layer: Layer, basis) -> SymFactor:
        return SymFactor(G, basis, diagonal=G.ndim == (1 if layer.groups == 1 else 2))

    def _layer_parts(self, i: int, layer: Layer, basis_a=None):
        """[(param indices, A factor, views)]: weight (or joint), then a separate bias."""
        sizes = self.layout.sizes
        parts = []
        if layer.weight is not None:
            A_i = self.A[i]
            assert A_i is not None
            A = SymFactor(A_i, basis_a, diagonal=layer.embedding)
            views = [View("cols" if layer.role.transposed else "rows", sizes[layer.weight])]
            params = [layer.weight]
            if layer.joint and layer.bias is not None:
                views.append(View("bias", sizes[layer.bias]))
                params.append(layer.bias)
            parts.append((tuple(params), A, tuple(views)))
        if layer.bias is not None and not layer.joint:
            bias_view = (View("bias", sizes[layer.bias]),)
            parts.append(((layer.bias,), SymFactor.one(self.G[i]), bias_view))
        return parts

    @property
    def factors(self) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
        """[(layer name, G, A or None for a bias-only layer)]: G (D₂, D₂) ((g, d₂, d₂) for g
        groups; forward-only: its diagonal, ones), A (D₁, D₁) ((g, d₁, d₁); an embedding's
        diagonal (V,))."""
        self._current_blocks()
        return [(layer.name, G, A) for layer, G, A in zip(self.layers, self.G, self.A)]

    def _state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        out: dict[str, dict[str, torch.Tensor]] = {}
        for layer, G, A in zip(self.layers, self.G, self.A):
            entry = {"G_diag" if self._factor(G, layer, None).diagonal else "G": G}
            if A is not None:
                entry["A_diag" if layer.embedding else "A"] = A
            out[layer.name] = entry
        for fb, F in zip(self.fallbacks, self.F):
            out[fb.name] = {"F_diag" if fb.mode == "diagonal" else "F": F}
        return out

    def _set_state_tensors(self, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        self.G = [_one_of(layers[lay.name], "G", "G_diag") for lay in self.layers]
        self.A = [_one_of(layers[lay.name], "A", "A_diag", None) for lay in self.layers]
        self.F = [_one_of(layers[fb.name], "F", "F_diag") for fb in self.fallbacks]
        self._build_blocks()


def _one_of(tensors: dict[str, torch.Tensor], *keys):
    """The first of ``keys`` present (the last key is the default when not a string)."""
    for key in keys:
        if isinstance(key, str) and key in tensors:
            return tensors[key]
    if keys and not isinstance(keys[-1], str):
        return keys[-1]
    raise KeyError(keys[0])
