"""GGNOperator: the generalised Gauss-Newton and the Fisher (Monte-Carlo, empirical).

Per batch, with J = ∂f/∂θ (f the model output) and L the batch loss:
  exact:      G = Jᵀ (∇²_f L) J                        (jvp -> closed-form loss Hessian -> vjp)
  mc:         F = s Σ_n Jₙᵀ (1/M Σ_m gₙₘ gₙₘᵀ) Jₙ,  gₙₘ = ∇_f ℓ(fₙ, ŷₙₘ), ŷ ~ p(y | fₙ)
  empirical:  E = s Σ_n Jₙᵀ gₙ gₙᵀ Jₙ,  gₙ = ∇_f ℓ(fₙ, yₙ),  i.e. s Σ_n ∇_θℓₙ ∇_θℓₙᵀ
(s the reduction factor; outer products span each data point's whole output.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import jvp, vmap

from curvops.core import checks
from curvops.core.checks import check_count
from curvops.core.data import Batch
from curvops.core.losses import output_loss
from curvops.core.options import GGNMode, JvpMethod, check_choice
from curvops.core.seeds import PointSampler
from curvops.operators.exact.base import ExactOperator, filled
from curvops.operators.exact.columns import contiguous_columns, now
from curvops.operators.exact.output_graph import OutputGraph


class GGNOperator(ExactOperator):
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
            None (the default): "reverse" while the graph cache is on (no forward pass per
            product), "forward" without it; "auto" times both once on the first batch and
            keeps the faster. Where one way fails (forward: an op without a forward-mode rule,
            e.g. fused attention or LSTM kernels; reverse: a backward op without a
            derivative, e.g. nn.Hardsigmoid's), "auto" and the default use the other.
        chunk_size: the most columns of a matmat processed at once, all of them in one
            batched pass (memory: see ``CurvatureOperator``); None: as ``column_mode`` says
            (see ``curvops.operators.exact.columns.ColumnPlan``).
        graph_cache_mib: each batch's output graph is kept between products, up to this
            many MiB (None: 1/4 of the device's available memory, see ``ExactOperator``),
            while the parameters, buffers, module modes and data tensors stay the same
            (checked on every product; 0 turns it off). A product then needs no forward
            pass with jvp="reverse", and never a new graph for Jᵀ U. A DataLoader's batches
            are kept within the same budget (reuse from the second product on).
        micro_batch_size: m rows per forward/backward at most; a larger batch runs as
            pieces, each weighed by its own share d_p / D, so the graph held during a
            product is a piece's (the same matrix, MC labels included: they are drawn per
            data point; see ``ExactOperator``).
        on_stale: "recompute" (default: products follow the parameters' current values) or
            "raise" (``StaleOperatorError`` once they changed; ``op.refresh()`` accepts them).
    ``loss_fn`` must be nn.MSELoss, nn.CrossEntropyLoss (class weights, ignore_index, label
    smoothing) or nn.BCEWithLogitsLoss (weight, pos_weight: not with mode="mc"), mean or
    sum; weighted terms count as that many copies (``curvops.core.losses``). Other keyword
    arguments: see ``CurvatureOperator``.
    """

    is_psd = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        *,
        mode: GGNMode = "exact",
        mc_samples: int = 1,
        seed: int = 0,
        jvp: JvpMethod | None = None,
        **kwargs: Any,
    ) -> None:
        self.mode: GGNMode = check_choice("mode", mode, GGNMode)
        check_count("mc_samples", mc_samples, 1)
        if jvp is not None:
            check_choice("jvp", jvp, JvpMethod)
        self.output_loss = output_loss(loss_fn)
        if self.mode == "mc":
            self.output_loss.check_sampling()
        self.mc_samples, self.seed, self.jvp = mc_samples, seed, jvp
        self._reverse_jvp: bool | None = None
        super().__init__(model, loss_fn, data, **kwargs)

    def _batch_matmat(self, batch: Batch, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
        Vs = contiguous_columns(self._columns, Vs)
        out = self._zero_parts(Vs)
        if not self._live_blocks():
            return filled(out)
        with torch.enable_grad():
            graph = self._graph(batch)
        for block in self._live_blocks():
            vs = [Vs[i] for i in block]
            JV = self._jacobian_matmat(graph, batch, block, vs)  # (k, *f.shape)
            HJV = self._output_matmat(graph.f.detach(), batch, JV)
            for i, r in zip(block, self._pullback(graph, block, HJV)):
                out[i] = r
        return filled(out)

    # ---------------------------------------------------------------- the output graph
    def _graph(self, batch: Batch) -> OutputGraph:
        """The batch's output with its graph: cached between products while valid."""
        graph = self._cache.get(batch)
        if graph is not None:
            return graph
        if self._reverse_jvp is None:
            self._reverse_jvp = self._decide_jvp(batch)
        reverse = self._reverse_jvp
        params = self.layout.params
        return self._cache.build(batch, lambda: self._build_graph(batch, reverse), params)

    def _build_graph(self, batch: Batch, reverse: bool) -> OutputGraph:
        f = checks.tensor_output(self._forward(batch.X), "GGN/Fisher")
        self.output_loss.check_targets(f, batch.y)
        return OutputGraph.build(f, self.layout.params, reverse)

    def _decide_jvp(self, batch: Batch) -> bool:
        """Reverse-mode J v (True) or forward mode, decided once (see ``jvp``)."""
        if self.jvp in ("reverse", "forward"):
            return self.jvp == "reverse"
        if self.jvp == "auto" and self._cache.enabled:
            return self._time_jvp(batch)
        return self._cache.enabled

    def _time_jvp(self, batch: Batch) -> bool:
        """Time J v both ways on one batch (jvp="auto"); a way that fails is not chosen."""
        graph = self._build_graph(batch, reverse=True)
        block = self.layout.blocks[0]
        vs = [torch.ones_like(self.layout.params[i]).unsqueeze(0) for i in block]  # no RNG use
        seconds = {True: 0.0, False: 0.0}
        for reverse in (True, False, True, False):  # the second round is warm
            if seconds[reverse] == float("inf"):
                continue
            start = now(self.device)
            try:
                self._jv(graph, batch, block, vs, reverse)
            except (RuntimeError, NotImplementedError):  # no rule for an op of the model
                seconds[reverse] = float("inf")
                continue
            seconds[reverse] = now(self.device) - start
        return seconds[True] <= seconds[False]

    # ---------------------------------------------------------------- J V and Jᵀ U
    def _jacobian_matmat(self, graph: OutputGraph, batch: Batch, block, vs) -> torch.Tensor:
        """J_b V_b (k, *f.shape) the decided way; where an op has no rule for it (forward:
        fused attention or RNN kernels, rrelu; reverse: a backward without a derivative,
        e.g. hardsigmoid), the other way from then on, unless ``jvp`` asked for this one."""
        way = "reverse" if graph.reverse else "forward"
        try:
            return self._jv(graph, batch, block, vs, graph.reverse)
        except (RuntimeError, NotImplementedError) as err:
            if self.jvp == way:
                other = "forward" if graph.reverse else "reverse"
                raise ValueError(
                    f"{way}-mode J v failed on this model ({err}); build the operator with "
                    f"jvp='{other}' (or leave jvp unset)"
                ) from err
            failed = err
        reverse = way == "forward"
        try:
            result = self._jv(graph, batch, block, vs, reverse)
        except (RuntimeError, NotImplementedError):
            raise failed from None  # both ways fail: not a missing rule
        self._reverse_jvp = reverse
        return result

    def _jv(self, graph: OutputGraph, batch: Batch, block, vs, reverse: bool) -> torch.Tensor:
        """J_b V_b by reverse mode through the cached graph, or by forward mode."""
        graph.reverse = reverse
        if not reverse:
            return self._forward_jvp(batch, block, vs)
        graph.enable_reverse(self.layout.params)
        return graph.jacobian_matmat(block, vs, self._step(vs[0].shape[0]))

    def _forward_jvp(self, batch: Batch, block, vs) -> torch.Tensor:
        names = [self.layout.names[i] for i in block]
        primals = tuple(self.layout.params[i].detach() for i in block)

        def output_of(*ps):
            return self._functional_forward(dict(zip(names, ps)), batch.X)

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
            return loss.hessian_matmat(f, batch.y, U, batch.denominator)
        if self.mode == "mc":
            sampler = PointSampler(self.seed, batch, f.device)
            g = loss.sampled_grads(f, batch.y, self.mc_samples, sampler) / self.mc_samples**0.5
        else:
            g = loss.true_grads(f, batch.y).unsqueeze(0)  # (1, B, ...)
        g = g.flatten(start_dim=2)  # (M, B, D)
        coeff = torch.einsum("mbd,kbd->kmb", g, U.flatten(start_dim=2))
        out = torch.einsum("kmb,mbd->kbd", coeff, g)
        return out.reshape(U.shape) * loss.scale(f, batch.y, batch.denominator)
