"""Per-batch raw material of KFAC / EKFAC: layer inputs and backpropagated output vectors.

One forward pass with hooks records every use (call) of a layer: its inputs a (B, R, D₁) and
output (``hooks``); then K vectors u_k (K, *f.shape) are backpropagated from the model output
f to every recorded output (forward-only: none, G = I):
  type2:     u_k = √(w s) S_k,  Σ_k S_k S_kᵀ = ∇²_f ℓ per term   (loss.hessian_sqrt;
             cross-entropy: C − 1 columns, ``without_null_column``)
  mc:        u_m = √(w s / M) ∇_f ℓ(f, ŷ_m),  ŷ_m ~ p(y | f),  m < M
  empirical: u   = √(w s) ∇_f ℓ(f, y)
(w the batch weight d_b / D or 1, s the loss's reduction factor; the terms' own weights
ω — class weights, 0 for ignored targets — are inside S and ∇ℓ as √ω: see
``curvops.core.losses``), so that Σ over batches and k of b bᵀ, b = J_layerᵀ u, is the
output-gradient factor G of the whole-data loss.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from curvops.core.checks import tensor_output
from curvops.core.data import Batch
from curvops.core.losses import CrossEntropy, OutputLoss
from curvops.core.seeds import PointSampler
from curvops.operators.kronecker.hooks import Capture, Output, Sites, Use


@dataclass
class BatchPass:
    """One batch's forward pass: its ``uses`` (in call order), the model output ``f`` and
    ``chunks``, yielding per chunk of vectors one entry per use: b (K', B, R, D₂ᵤ) for a
    Kronecker layer's use, the gradients w.r.t. its outputs for a fallback module's."""

    uses: list[Use]
    f: torch.Tensor
    chunks: Iterator[list]


class BatchCollector:
    """Per batch: the uses of the layers, and their output gradients chunk by chunk of vectors.

    ``collector(batch, w)`` -> ``BatchPass``; ``chunks`` yields per chunk of at most
    ``max_columns`` vectors one entry per use. Sums over the chunks are sums over all K
    vectors (forward-only: no vectors, no chunks).
    For type-2 with several loss terms per data point (sequence outputs) every column of
    the Hessian's square root is split by term position, so that backpropagated vectors of
    different terms never mix (exact for any architecture; costs one backward per term).
    """

    def __init__(
        self,
        sites: Sites,
        loss: OutputLoss,
        forward: Callable,
        forward_context: Callable,
        fisher: str,
        mc_samples: int,
        seed: int,
        max_columns: int = 32,
    ) -> None:
        self.sites, self.loss, self.forward = sites, loss, forward
        self.forward_context = forward_context
        self.fisher, self.mc_samples, self.seed = fisher, mc_samples, seed
        if fisher == "mc":
            loss.check_sampling()
        self.max_columns = max_columns
        self.clone = False  # set by ``needs_clones`` when the model modifies outputs in place

    def needs_clones(self, batch: Batch) -> bool:
        """One forward pass of ``batch`` (no side effects): does the model modify a recorded
        output in place? If so, every later pass hands clones on (``clone``)."""
        capture = Capture(self.sites, batch.size, clone=False)
        with torch.enable_grad(), capture.active(), self.forward_context():
            self.forward(batch.X)
        self.clone = self.clone or capture.modified()
        capture.take_uses()
        return self.clone

    def __call__(
        self,
        batch: Batch,
        weight: float,
        max_columns: int | None = None,
        on_use: Callable[[Use], None] | None = None,
        layers_only: bool = False,
    ) -> BatchPass:
        """One batch's pass; ``max_columns`` overrides the chunk size (1: no stacking of the
        per-vector gradients, the cheapest when each chunk is summed anyway); ``on_use(use)``
        sees each use during the forward pass (and may drop its inputs, so that a batch's
        inputs never all live at once); ``layers_only``: no fallback module is hooked."""
        sites = self.sites
        if layers_only:
            sites = Sites(sites.layers, sites.attention, sites.functional, [])
        capture = Capture(sites, batch.size, on_use, clone=self.clone)
        with capture.active(), torch.enable_grad(), self.forward_context():
            f = tensor_output(self.forward(batch.X), "KFAC")
        if capture.modified():
            raise RuntimeError(
                "a layer's output was modified in place in this batch's forward pass but not "
                "in the first one's (a data-dependent in-place operation): KFAC cannot tell "
                "its output gradients. Make the operation out of place"
            )
        uses = capture.take_uses()
        self.loss.check_targets(f, batch.y)
        if self.fisher == "forward-only":
            return BatchPass(uses, f, iter(()))
        U = self.vectors(f.detach(), batch, weight, max_columns or self.max_columns)
        return BatchPass(uses, f, self._chunks(f, uses, U))

    def _chunks(self, f: torch.Tensor, uses: list[Use], columns) -> Iterator[list]:
        outputs = [o for use in uses for o in use.outputs]
        if not outputs:
            return
        for U in columns:
            yield split_by_use(uses, backprop(f, outputs, U))

    def vectors(
        self, f: torch.Tensor, batch: Batch, weight: float, max_columns: int
    ) -> Iterator[torch.Tensor]:
        """Chunks (K', *f.shape) of the output-space vectors whose backpropagations build G
        (none when every target of the batch is ignored: d_b = 0)."""
        loss, y = self.loss, batch.y
        if not batch.denominator:
            return iter(())
        scale = weight * loss.scale(f, y, batch.denominator)
        if self.fisher == "type2":
            U = loss.hessian_sqrt(f, y)
            if isinstance(loss, CrossEntropy) and U.shape[0] == f.shape[1] > 1:
                U = without_null_column(U, f)
            return _split_by_term(U * math.sqrt(scale), loss.term_axes(f), max_columns)
        if self.fisher == "mc":
            sampler = PointSampler(self.seed, batch, f.device)
            U = loss.sampled_grads(f, y, self.mc_samples, sampler) * math.sqrt(
                scale / self.mc_samples
            )
        else:
            U = loss.true_grads(f, y).unsqueeze(0) * math.sqrt(scale)
        return iter(torch.split(U, max_columns))


def without_null_column(U: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """C − 1 columns (C − 1, B, C, ...) with the Σ_k u_k u_kᵀ of CE's C columns U (C, B, C, ...).

    U q = 0 for q = √softmax(f) (the Hessian's null vector); the Householder reflection
    H = I − v vᵀ / (1 + q_C), v = q + e_C, is orthogonal with H e_C = −q, so U H has U Uᵀ
    and a last column U(−q) = 0: dropped, one backward pass fewer per batch (9 for 10 classes).
    """
    q = torch.softmax(f, dim=1).sqrt()  # (B, C, ...)
    v = q.clone()
    v[:, -1] += 1
    v = torch.movedim(v, 1, 0).unsqueeze(2)  # (C, B, 1, ...)
    w = (U * v).sum(dim=0)  # U v: (B, C, ...)
    return U[:-1] - (v[:-1] / (1 + q[:, -1:]).unsqueeze(0)) * w


def _split_by_term(U: torch.Tensor, axes: tuple[int, ...], max_columns: int):
    """Column chunks of U (K, *f.shape); with several terms, each chunk keeps one position."""
    sizes = [U.shape[1 + a] for a in axes]
    for c in range(0, U.shape[0], max_columns):
        chunk = U[c : c + max_columns]
        if math.prod(sizes) <= 1:
            yield chunk
            continue
        for pos in itertools.product(*[range(n) for n in sizes]):
            index = [slice(None)] * chunk.ndim
            for a, p in zip(axes, pos):
                index[1 + a] = slice(p, p + 1)
            masked = torch.zeros_like(chunk)
            masked[tuple(index)] = chunk[tuple(index)]
            yield masked


def split_by_use(uses: list[Use], grads: list[torch.Tensor]) -> list:
    """Per use: b (K', B, R, D₂ᵤ) (a Kronecker layer) or its outputs' gradients (a module)."""
    out, it = [], iter(grads)
    for use in uses:
        gs = [next(it) for _ in use.outputs]
        out.append(use.layout(gs[0]) if use.layout is not None else gs)
    return out


def backprop(f: torch.Tensor, outputs: list[Output], U: torch.Tensor):
    """[(K', *out.shape)] = J_outᵀ U_k for every recorded layer output, one backward per k
    (through the outputs' gradient edges; 0 for an output f does not depend on).

    (A vmapped backward, ``is_grads_batched=True``, measured slower on CPU for a small CNN.)
    """
    edges = [o.edge for o in outputs if o.edge is not None]
    per_k = []
    for u in U:
        grads = iter(
            torch.autograd.grad(f, edges, grad_outputs=u, retain_graph=True, allow_unused=True)
            if edges
            else ()
        )
        found = [next(grads) if o.edge is not None else None for o in outputs]
        per_k.append([o.zeros() if g is None else g for o, g in zip(outputs, found)])
    if len(per_k) == 1:  # a view, no copy
        return [g.unsqueeze(0) for g in per_k[0]]
    return [torch.stack([gs[j] for gs in per_k]) for j in range(len(outputs))]
