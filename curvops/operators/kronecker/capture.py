"""Per-batch raw material of KFAC / EKFAC: layer inputs and backpropagated output vectors.

One forward pass with hooks records every layer's inputs a (B, R, D₁) and output; then K
vectors u_k (K, *f.shape) are backpropagated from the model output f to every layer output:
  type2:     u_k = √(w s) S_k,  Σ_k S_k S_kᵀ = ∇²_f ℓ per term   (loss.hessian_sqrt)
  mc:        u_m = √(w s / M) ∇_f ℓ(f, ŷ_m),  ŷ_m ~ p(y | f),  m < M
  empirical: u   = √(w s) ∇_f ℓ(f, y)
(w the batch weight B/N or 1, s the loss's reduction factor), so that Σ over batches and k
of b bᵀ, b = J_layerᵀ u, is the output-gradient factor G of the whole-data loss.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from curvops.core.data import Batch
from curvops.core.losses import OutputLoss
from curvops.core.seeds import PointSampler
from curvops.operators.kronecker.layers import Layer, layer_inputs, output_grads


class _Capture:
    """Forward hooks: inputs (B, R, D₁) and outputs of each layer, one call per forward.
    With ``on_input``, each layer's inputs go to ``on_input(i, a)`` and are not kept."""

    def __init__(self, layers: list[Layer], on_input: Callable | None = None) -> None:
        self.layers, self.on_input = layers, on_input
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def hook(self, i: int) -> Callable:
        def fn(module, args, output):
            if i in self.outputs:
                layer = self.layers[i]
                raise ValueError(
                    f"module '{layer.name}' ({type(module).__name__}) was called more than once "
                    "in one forward pass (weight sharing / tying): KFAC supports one call per "
                    "forward pass. Pass params= without its parameters"
                )
            a = layer_inputs(module, args[0].detach())
            if self.on_input is None:
                self.inputs[i] = a
            else:
                self.on_input(i, a)
            self.outputs[i] = output
            return output.clone()  # later in-place ops must not change the recorded output

        return fn

    @contextmanager
    def active(self):
        handles = [
            layer.module.register_forward_hook(self.hook(i)) for i, layer in enumerate(self.layers)
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


class BatchCollector:
    """Per batch: the layers' inputs, and their output gradients chunk by chunk of vectors.

    ``collect(batch, w)`` -> (inputs, chunks): inputs[i] is a (B, R, D₁) or None (layer i
    not called); ``chunks`` yields, per chunk of at most ``max_columns`` vectors, a list with
    b (K', B, R, D₂) (or None) per layer. Sums over the chunks are sums over all K vectors.
    For type-2 with several loss terms per data point (sequence outputs) every column of
    the Hessian's square root is split by term position, so that backpropagated vectors of
    different terms never mix (exact for any architecture; costs one backward per term).
    """

    def __init__(
        self,
        layers: list[Layer],
        loss: OutputLoss,
        forward: Callable,
        forward_context: Callable,
        fisher: str,
        mc_samples: int,
        seed: int,
        max_columns: int = 32,
    ) -> None:
        self.layers, self.loss, self.forward = layers, loss, forward
        self.forward_context = forward_context
        self.fisher, self.mc_samples, self.seed = fisher, mc_samples, seed
        self.max_columns = max_columns

    def __call__(
        self,
        batch: Batch,
        weight: float,
        max_columns: int | None = None,
        on_input: Callable | None = None,
    ):
        """(inputs, chunks) of one batch; ``max_columns`` overrides the chunk size (1: no
        stacking of the per-vector gradients, the cheapest when each chunk is summed anyway);
        with ``on_input(i, a)`` each layer's inputs are handed over during the forward pass
        and not kept (inputs[i] is then None): a batch's inputs never all live at once."""
        capture = _Capture(self.layers, on_input)
        with capture.active(), torch.enable_grad(), self.forward_context():
            f = self.forward(batch.X)
        if not isinstance(f, torch.Tensor):
            raise TypeError(
                f"the model returned a {type(f).__name__}; KFAC needs a tensor output: wrap "
                "the model so that forward returns the logits"
            )
        self.loss.check_targets(f, batch.y)
        inputs = [capture.inputs.get(i) for i in range(len(self.layers))]
        U = self.vectors(f.detach(), batch, weight, max_columns or self.max_columns)
        return inputs, self._chunks(f, capture.outputs, U)

    def _chunks(self, f: torch.Tensor, outputs: dict[int, torch.Tensor], columns):
        called = sorted(outputs)
        if not called:
            return
        for U in columns:
            grads = _backprop(f, [outputs[i] for i in called], U)
            result: list[torch.Tensor | None] = [None] * len(self.layers)
            for i, g in zip(called, grads):
                result[i] = output_grads(self.layers[i].module, g)
            yield result

    def vectors(
        self, f: torch.Tensor, batch: Batch, weight: float, max_columns: int
    ) -> Iterator[torch.Tensor]:
        """Chunks (K', *f.shape) of the output-space vectors whose backpropagations build G."""
        loss, y = self.loss, batch.y
        scale = weight * loss.scale(f, y)
        if self.fisher == "type2":
            U = loss.hessian_sqrt(f, y) * math.sqrt(scale)
            return _split_by_term(U, loss.term_axes(f), max_columns)
        if self.fisher == "mc":
            sampler = PointSampler(self.seed, batch, f.device)
            U = loss.sampled_grads(f, y, self.mc_samples, sampler) * math.sqrt(
                scale / self.mc_samples
            )
        else:
            U = loss.true_grads(f, y).unsqueeze(0) * math.sqrt(scale)
        return iter(torch.split(U, max_columns))


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


def _backprop(f: torch.Tensor, outputs: list[torch.Tensor], U: torch.Tensor):
    """[(K', *out.shape)] = J_outᵀ U_k for every recorded layer output, one backward per k.

    (A vmapped backward, ``is_grads_batched=True``, measured slower on CPU for a small CNN.)
    """
    per_k = []
    for u in U:
        grads = torch.autograd.grad(
            f, outputs, grad_outputs=u, retain_graph=True, allow_unused=True
        )
        per_k.append([torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads)])
    if len(per_k) == 1:  # a view, no copy
        return [g.unsqueeze(0) for g in per_k[0]]
    return [torch.stack([gs[j] for gs in per_k]) for j in range(len(outputs))]
