"""GGNOperator: the generalised Gauss-Newton and the Fisher (Monte-Carlo, empirical).

Per batch, with J = ∂f/∂θ (f the model output) and L the batch loss:
  exact:      G = Jᵀ (∇²_f L) J                        (jvp -> closed-form loss Hessian -> vjp)
  mc:         F = s Σ_n Jₙᵀ (1/M Σ_m gₙₘ gₙₘᵀ) Jₙ,  gₙₘ = ∇_f ℓ(fₙ, ŷₙₘ), ŷ ~ p(y | fₙ)
  empirical:  E = s Σ_n Jₙᵀ gₙ gₙᵀ Jₙ,  gₙ = ∇_f ℓ(fₙ, yₙ),  i.e. s Σ_n ∇_θℓₙ ∇_θℓₙᵀ
(s the reduction factor; outer products span each data point's whole output.)
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp, vmap

from curvops.operators._columns import ColumnPlan, contiguous_columns, device_of, now
from curvops.operators._graph_cache import GraphCache
from curvops.operators._output_graph import OutputGraph
from curvops.operators.base import CurvatureOperator
from curvops.operators.data import Batch
from curvops.operators.losses import output_loss
from curvops.operators.sampling import sample_generator

GGN_MODES = ("exact", "mc", "empirical")
JVP_METHODS = ("auto", "forward", "reverse")


class GGNOperator(CurvatureOperator):
    """GGN / Fisher of the whole-data loss (P, P), positive semi-definite.

    Args:
        mode: "exact" (type-2 GGN), "mc" (Monte-Carlo Fisher with labels sampled from the
            model's predictive distribution) or "empirical" (per-example gradient outer
            products with the true labels).
        mc_samples: labels drawn per data point in "mc" mode (variance ∝ 1 / mc_samples).
        seed: the MC labels of a batch come from the seed and the batch's content, so every
            product sees the same matrix, whatever the batch order or the rank holding it.
        jvp: how J V is computed: "forward" (forward mode, which recomputes the forward pass)
            or "reverse" (one backward through the cached graph of Jᵀu, which is linear in u);
            "auto" times both once on the first batch and keeps the faster. Without the
            cache: forward.
        chunk_size: the most columns of a matmat processed at once, all of them in one
            batched pass (memory: see ``CurvatureOperator``); None chooses by model and
            timing (see ``curvops.operators._columns.ColumnPlan``).
        graph_cache_mib: each batch's output graph is kept between products, up to this
            many MiB, while the parameters, buffers, module modes and data tensors stay the
            same (checked on every product; 0 turns it off). A product then needs no forward
            pass with jvp="reverse", and never a new graph for Jᵀ U.
        on_stale: "recompute" (default: products follow the parameters' current values) or
            "raise" (``StaleOperatorError`` once they changed; ``op.refresh()`` accepts them).
    ``loss_fn`` must be nn.MSELoss, nn.CrossEntropyLoss or nn.BCEWithLogitsLoss (mean or
    sum); other keyword arguments: see ``CurvatureOperator``.
    """

    is_psd = True

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        mode: str = "exact",
        mc_samples: int = 1,
        seed: int = 0,
        jvp: str = "auto",
        chunk_size: int | None = None,
        graph_cache_mib: float = 1024.0,
        **kwargs,
    ) -> None:
        if mode not in GGN_MODES:
            raise ValueError(f"mode must be one of {GGN_MODES}, got {mode!r}")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.output_loss = output_loss(loss_fn)
        if jvp not in JVP_METHODS:
            raise ValueError(f"jvp must be one of {JVP_METHODS}, got {jvp!r}")
        self.mode, self.mc_samples, self.seed = mode, mc_samples, seed
        self.jvp = jvp
        self._reverse_jvp: bool | None = None
        self._cache = GraphCache(model, graph_cache_mib)
        self._plan = ColumnPlan(device_of(model), model, chunk_size)
        self._columns: list = []
        super().__init__(model, loss_fn, data, chunk_size=chunk_size, **kwargs)

    def _chunk_matmat(self, M: torch.Tensor) -> torch.Tensor:
        if M.ndim == 2:
            return self._plan.matmat(self._product, M, self._cache)
        return self._product(M)

    def _product(self, M: torch.Tensor) -> torch.Tensor:
        self._cache.begin_pass()
        try:
            return self._data_pass(M)
        finally:
            self._cache.end_pass()
            self._columns.clear()

    def _batch_matmat(self, batch: Batch, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
        Vs = contiguous_columns(self._columns, Vs)
        with torch.enable_grad():
            graph = self._graph(batch)
        out: list[torch.Tensor | None] = [None] * len(Vs)
        for block in self.layout.blocks:
            vs = [Vs[i] for i in block]
            JV = self._jacobian_matmat(graph, batch, block, vs)  # (k, *f.shape)
            HJV = self._output_matmat(graph.f.detach(), batch, JV)
            for i, r in zip(block, self._pullback(graph, block, HJV)):
                out[i] = r
        return out

    # ---------------------------------------------------------------- the output graph
    def _graph(self, batch: Batch) -> OutputGraph:
        """The batch's output with its graph: cached between products while valid."""
        graph = self._cache.get(batch)
        if graph is not None:
            return graph
        if self._cache.enabled and self._reverse_jvp is None:
            self._reverse_jvp = self._choose_jvp(batch)
        reverse = self._cache.enabled and bool(self._reverse_jvp)
        params = self.layout.params
        return self._cache.build(batch, lambda: self._build_graph(batch, reverse), params)

    def _build_graph(self, batch: Batch, reverse: bool) -> OutputGraph:
        f = self._forward(batch.X)
        if not isinstance(f, torch.Tensor):
            raise TypeError(
                f"the model returned a {type(f).__name__}; GGN/Fisher need a tensor "
                "output: wrap the model so that forward returns the logits"
            )
        self.output_loss.check_targets(f, batch.y)
        return OutputGraph.build(f, self.layout.params, reverse)

    def _choose_jvp(self, batch: Batch) -> bool:
        """Time J v both ways on one batch: reverse (cached graph) or forward mode."""
        if self.jvp != "auto":
            return self.jvp == "reverse"
        graph = self._build_graph(batch, reverse=True)
        block = self.layout.blocks[0]
        vs = [torch.ones_like(self.layout.params[i]).unsqueeze(0) for i in block]  # no RNG use
        seconds = {}
        for reverse in (True, False, True, False):  # the second round is warm
            start = now(self.device)
            graph.reverse = reverse
            self._jacobian_matmat(graph, batch, block, vs)
            seconds[reverse] = now(self.device) - start
        return seconds[True] < seconds[False]

    # ---------------------------------------------------------------- J V and Jᵀ U
    def _jacobian_matmat(self, graph: OutputGraph, batch: Batch, block, vs) -> torch.Tensor:
        if graph.reverse:
            return graph.jacobian_matmat(block, vs, self._step(vs[0].shape[0]))
        names = [self.layout.names[i] for i in block]
        primals = tuple(self.layout.params[i].detach() for i in block)

        def output_of(*ps):
            return functional_call(self.model, dict(zip(names, ps)), (batch.X,))

        return vmap(lambda *v: jvp(output_of, primals, v)[1])(*vs)

    def _pullback(self, graph: OutputGraph, block, U: torch.Tensor) -> list[torch.Tensor]:
        ps = [self.layout.params[i] for i in block]
        return graph.transpose_matmat(ps, U, self._step(U.shape[0]))

    def _step(self, k: int) -> int:
        return self._plan.step(k)

    def _output_matmat(self, f: torch.Tensor, batch: Batch, U: torch.Tensor) -> torch.Tensor:
        """The output-space curvature of the batch loss times U (k, B, ...)."""
        loss = self.output_loss
        if self.mode == "exact":
            return loss.hessian_matmat(f, batch.y, U)
        if self.mode == "mc":
            gen = sample_generator(self.seed, batch, f.device)
            g = loss.sampled_grads(f, batch.y, self.mc_samples, gen) / self.mc_samples**0.5
        else:
            g = loss.true_grads(f, batch.y).unsqueeze(0)  # (1, B, ...)
        g = g.flatten(start_dim=2)  # (M, B, D)
        coeff = torch.einsum("mbd,kbd->kmb", g, U.flatten(start_dim=2))
        out = torch.einsum("kmb,mbd->kbd", coeff, g)
        return out.reshape(U.shape) * loss.scale(f, batch.y)
