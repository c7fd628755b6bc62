"""CurvatureOperator: a scipy LinearOperator over the flattened parameters, backed by torch.

Subclasses implement one method, ``_batch_matmat(batch, Vs)``: the product of ONE batch's
curvature (of its own batch loss) with k directions. The base class owns everything else:
parameter layout and blocks, the data loop and the d_b / D batch weights, device and dtype,
the numpy <-> torch boundary, input validation, distributed reduction, finiteness checks,
stale-parameter detection and column chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from curvops.core import checks
from curvops.core.data import Batch, DataLoop
from curvops.core.denominators import batch_weight, check_shapes, loss_denominator, loss_reduction
from curvops.core.errors import StaleOperatorError
from curvops.core.lm import TokenLoss, loss_parts
from curvops.core.losses import target_checker
from curvops.core.options import OnStale, Reduction, check_choice
from curvops.core.outputs import call_model, logits_of
from curvops.core.params import Blocks, build_layout, flatten, unflatten
from curvops.core.watch import ModelWatch, Token
from curvops.distributed import all_reduce_sum
from curvops.interface import SymmetricTorchOperator
from curvops.operators.chunks import by_chunks
from curvops.operators.determinism import check_deterministic, refuse_random_forward
from curvops.operators.staleness import Staleness

DEFAULT_MAX_DENSE = 20_000  # to_dense() refuses larger P: 20,000² float64 numbers are 3.2 GB

__all__ = ["DEFAULT_MAX_DENSE", "CurvatureOperator", "StaleOperatorError"]


class CurvatureOperator(Staleness, SymmetricTorchOperator):
    """Curvature of ``loss_fn(model(X), y)`` over all of ``data``, as a (P, P) LinearOperator.

    Args:
        model: any ``nn.Module``; the operator follows its parameters' current values.
        loss_fn: the loss, reduction "mean" or "sum" (KLDivLoss also "batchmean"; a plain
            callable counts as a mean over the points of a batch). The operator is the
            curvature of the loss over the WHOLE data set: with "mean", a batch weighs
            d_b / D, d_b what torch's mean divides it by (its loss terms; Σ w_{y_n} over the
            targets that are not ``ignore_index`` for CrossEntropyLoss / NLLLoss), D the
            sum over the data (``curvops.core.denominators``). Batches with no points or no
            loss terms are skipped. ``curvops.CausalLMLoss()`` / ``MaskedLMLoss()``: the
            token cross-entropy of a language model, as transformers computes it.
        data: a re-iterable of ``(X, y)`` batches (list, DataLoader); sizes may differ. X
            may be a mapping (``model(**X)`` for a Hugging Face model); an output with
            ``.logits`` (a ``ModelOutput``) counts as its logits.
        params: the parameters to differentiate (default: all with ``requires_grad``).
        blocks: None (full matrix), "layer" (one block per module owning parameters) or a
            list of parameter lists; with blocks the operator is block-diagonal.
        num_data: N, the number of data points, checked against the count of the
            construction's pass over the targets (no forward passes), which also sums D.
        batch_size_fn: B of a batch whose X is not a tensor (e.g. a dict of tensors).
        progress: a tqdm bar over the batches of every product.
        check_deterministic: evaluate the loss and a product twice and refuse a random model.
        process_group: None, or a ``torch.distributed`` group whose ranks each hold a shard of
            the data; products and N are summed over the ranks.
        math_attention: run scaled-dot-product attention with its math kernel during the
            products (the fused CPU/GPU kernels have no second derivative); the model itself
            is not changed.
        reduction: the reduction of a plain callable ("mean": a batch of B weighs B / N;
            "sum": weight 1); callables count as "mean". A loss module's own reduction is used.
        chunk_size: the most columns of a matmat processed at once (None: all k); a matmat
            with more columns runs chunk by chunk, one data pass per chunk.
        on_stale: what a product does once the model's parameters or buffers changed since
            the operator was built or last refreshed (an optimizer step): "recompute" (the
            default here: the Hessian and GGN follow the current values by construction,
            cached graphs are checked by value) or "raise" ``StaleOperatorError`` (the
            operator stands for the curvature at the values it was built with; accept new
            values with ``op.refresh()``). KFAC / EKFAC recompute their factors.

    ``op @ v`` and ``op.matmat(V)`` take numpy (P,) / (P, k); ``op.torch_matmat(M)`` takes a
    torch tensor on ``op.device`` and returns one there, without host copies.

    Precision: float32 or float64 parameters; a float16 / bfloat16 model is refused with a
    TypeError (analyse a float32 copy: the user's model is never cast).
    Memory: with c = min(k, chunk_size), a matmat with k columns needs, besides M and the
    result (P x k each), at most about 4·c·P numbers plus c times the working memory of one
    column on one batch (Hessian: a backward through the batch's gradient graph; GGN: J v,
    the loss Hessian and Jᵀ u on the batch's outputs; KFAC / EKFAC: G V A for the largest
    block), plus one batch's graph and the graph cache (``graph_cache_mib``).
    """

    is_psd = False  # positive semi-definite by construction (GGN, Fisher, KFAC, EKFAC)
    is_block_diagonal = True  # products never couple two blocks of ``block_slices``

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        *,
        params: Iterable[torch.Tensor] | None = None,
        blocks: Blocks = None,
        num_data: int | None = None,
        batch_size_fn: Callable[[Any], int] | None = None,
        progress: bool = False,
        check_deterministic: bool = False,
        process_group: Any = None,
        reduction: Reduction | None = None,
        math_attention: bool = True,
        chunk_size: int | None = None,
        on_stale: OnStale = "recompute",
    ) -> None:
        checks.check_chunk_size(chunk_size)
        check_choice("on_stale", on_stale, OnStale)
        checks.check_module_modes(model)
        self.model, self.chunk_size, self.on_stale = model, chunk_size, on_stale
        self.token_loss = loss_fn if isinstance(loss_fn, TokenLoss) else None
        parts = loss_parts(loss_fn)  # a language-model loss: cross-entropy over the tokens
        self.loss_fn, self._outputs = parts.loss_fn, parts.outputs
        self.reduction = loss_reduction(self.loss_fn, reduction)
        denominator = loss_denominator(self.loss_fn)
        self._targets = target_checker(self.loss_fn)
        self.layout = build_layout(model, params, blocks)
        checks.check_params_finite(self.layout.params, self.layout.names)
        first = self.layout.params[0]
        self.device, self.torch_dtype = first.device, first.dtype
        self.process_group = process_group
        self.math_attention = math_attention
        self._loop = DataLoop(
            data, self.device, self.torch_dtype, batch_size_fn, progress,
            allow_empty=process_group is not None, denominator=denominator, targets=parts.targets,
            keep_bytes=self._kept_data_bytes(),
        )  # fmt: skip
        self.num_data, self.denominator = self._count_data(num_data)
        size = self.layout.num_params
        super().__init__(
            dtype=np.dtype(str(self.torch_dtype).removeprefix("torch.")), shape=(size, size)
        )
        self._watch = ModelWatch(model)
        self._fresh: Token = self._watch.token()
        self._token: Token = self._fresh  # the model's token during the current product
        self._refuse_random_forward()
        if check_deterministic:
            self._check_deterministic()

    # ---------------------------------------------------------------- public attributes
    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters, in flat-vector order."""
        return list(self.layout.params)

    @property
    def param_names(self) -> list[str]:
        return list(self.layout.names)

    @property
    def block_slices(self) -> list[slice]:
        """One slice of the flat vector per block (a single slice without blocks)."""
        return self.layout.block_slices

    @property
    def block_names(self) -> list[str]:
        return list(self.layout.block_names)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Parameter-shaped tensors -> flat vector (P,)."""
        return flatten(tensors)

    def unflatten(self, vec: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """Flat vector (P,) (numpy or torch) -> tensors shaped like ``op.params``."""
        vec = torch.as_tensor(np.asarray(vec) if not isinstance(vec, torch.Tensor) else vec)
        checks.check_length(vec.shape[0] if vec.ndim else -1, self.shape[0])
        return unflatten(vec.to(device=self.device, dtype=self.torch_dtype), self.layout)

    # ---------------------------------------------------------------- torch fast path
    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """A @ M for M (P,) or (P, k) on ``op.device``; one pass over the data for all k.

        Under a ``process_group`` this rank's product is summed over the ranks with exactly
        one ``all_reduce`` of P x k numbers, whatever the rank's data or column plan.
        """
        M = self._check_torch_input(M)
        self._token = self._watch.token()
        self._ensure_fresh(self._token)
        result = self._all_reduce(self._local_matmat(M).contiguous())
        checks.check_finite(result, f"product of {type(self).__name__}")
        return result

    def _local_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """This rank's share of A @ M (no reduction), at most ``chunk_size`` columns at once."""
        return by_chunks(self._chunk_matmat, M, self.chunk_size)

    def _chunk_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """A @ M for one chunk of columns; subclasses may split it further (ColumnPlan)."""
        return self._data_pass(M)

    def _data_pass(self, M: torch.Tensor) -> torch.Tensor:
        """Σ_batches w_b A_b @ M over this rank's data, M (P,) or (P, k): one data pass."""
        squeeze = M.ndim == 1
        M = M.unsqueeze(1) if squeeze else M
        Vs = [
            M[s].T.reshape(M.shape[1], *p.shape)
            for s, p in zip(self.layout.slices, self.layout.params)
        ]
        out = [torch.zeros_like(v) for v in Vs]
        for batch in self._batches():
            w = self._batch_weight(batch)
            with self._forward_context():
                parts = self._batch_matmat(batch, Vs)
            for acc, part in zip(out, parts):
                acc.add_(part.detach(), alpha=w)
        result = torch.cat([o.reshape(M.shape[1], -1) for o in out], dim=1).T
        return result.squeeze(1) if squeeze else result

    def gradient(self) -> torch.Tensor:
        """∇_θ L (P,), the whole-data loss gradient with the same batch weights as the products."""
        self._ensure_fresh()
        total = [torch.zeros_like(p) for p in self.layout.params]
        for batch in self._batches():
            w = self._batch_weight(batch)
            with torch.enable_grad(), self._forward_context():
                grads = torch.autograd.grad(
                    self._batch_loss(batch), self.layout.params, allow_unused=True
                )
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g, alpha=w)
        result = self._all_reduce(flatten(total))
        checks.check_finite(result, "loss gradient")
        return result

    def _batch_matmat(self, batch: Batch, Vs: list[torch.Tensor]) -> list[torch.Tensor]:
        """One batch's curvature (of its own batch loss) times Vs; Vs[i]: (k, *params[i].shape)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _batch_matmat")

    def to_dense(self, max_size: int = DEFAULT_MAX_DENSE) -> torch.Tensor:
        """The (P, P) matrix, column block by column block, for tests and debugging.

        Refuses P > ``max_size`` (default ``DEFAULT_MAX_DENSE`` = 20,000: 3.2 GB in float64)
        rather than allocate O(P²) memory implicitly; pass a larger max_size to override.
        """
        P = self.shape[0]
        if max_size < P:
            raise ValueError(
                f"to_dense() would build a {P} x {P} matrix ({P * P * self.dtype.itemsize / 2**30:.1f}"
                f" GiB); it is meant for small models (P <= {max_size}). Use matmat / eigsh instead,"
                " or pass max_size= to override"
            )
        chunk = max(1, min(P, 2**24 // P))
        eye = torch.eye(P, device=self.device, dtype=self.torch_dtype)
        return torch.cat(
            [self.torch_matmat(eye[:, i : i + chunk]) for i in range(0, P, chunk)], dim=1
        )

    # ---------------------------------------------------------------- helpers
    def _forward(self, X):
        """The model's output on X as the loss takes it: ``model(**X)`` for a mapping X
        whose keys are forward's keywords (a Hugging Face model), the logits of a
        ``ModelOutput``, a ``TokenLoss``'s (B, V, S') logits (``curvops.core.outputs``)."""
        return self._outputs(logits_of(call_model(self.model, X)))

    def _functional_forward(self, params: dict[str, torch.Tensor], X):
        """``_forward`` with the parameters ``params`` (name -> tensor), by functional_call."""
        return self._outputs(logits_of(call_model(self.model, X, params)))

    def _forward_context(self):
        """Context for every forward pass whose graph is differentiated twice."""
        return sdpa_kernel(SDPBackend.MATH) if self.math_attention else nullcontext()

    def _batch_loss(self, batch: Batch) -> torch.Tensor:
        output = self._forward(batch.X)
        if self._targets is not None:  # a torch loss with a closed form takes a tensor
            checks.tensor_output(output, type(self).__name__)
        self._check_targets(output, batch.y)
        return self.loss_fn(output, batch.y)

    def _check_targets(self, output, y) -> None:
        """Targets that fit the output (shape, class range) for the supported losses."""
        if self._targets is not None and isinstance(output, torch.Tensor):
            self._targets.check_targets(output, y)
        check_shapes(self.loss_fn, output, y)

    def _batches(self) -> Iterator[Batch]:
        """The batches whose loss has terms (d_b > 0); one whose every target is ignored
        contributes nothing (and its mean loss would be 0/0)."""
        return (batch for batch in self._loop if batch.denominator)

    def _batch_weight(self, batch: Batch) -> float:
        """w_b = d_b / D ("mean") or 1 ("sum"): the batch loss's share of the whole-data loss."""
        return batch_weight(self.reduction, batch.denominator, self.denominator)

    def _count_data(self, num_data: int | None) -> tuple[int, float]:
        """(N, D) over the data and the ranks, from one pass over the targets."""
        points, total = self._loop.count()
        local = torch.tensor([float(points), total], dtype=torch.float64, device=self.device)
        count, denominator = self._all_reduce(local).tolist()
        if num_data is not None and int(num_data) != int(count):
            raise ValueError(
                f"num_data={num_data} was given, but the data yield {int(count)} data points "
                "in a pass: leave num_data out (it is counted), or pass the data it belongs to"
            )
        if self.reduction == "mean" and denominator <= 0:
            raise ValueError(
                "the whole-data mean loss is 0/0: no target counts (every one is ignore_index "
                "or has class weight 0); give the data some targets that count"
            )
        return int(count), denominator

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t, self.process_group)

    def _check_torch_input(self, M: torch.Tensor) -> torch.Tensor:
        checks.check_torch_input(M, self.shape[0])
        return M.to(device=self.device, dtype=self.torch_dtype)

    def _refuse_random_forward(self) -> None:
        """Refuse a random forward pass (``curvops.operators.determinism``)."""
        refuse_random_forward(self)

    def _check_deterministic(self) -> None:
        """Every batch's loss twice, one product from two passes (``...determinism``)."""
        check_deterministic(self)

    def _kept_data_bytes(self) -> float:
        """Bytes of batches the data loop may keep on the device (``DataLoop``): none here;
        the exact operators keep a DataLoader's batches for their graph cache."""
        return 0.0

    def _forget_cached_passes(self) -> None:
        """Drop what a product reuses from earlier data passes (the exact operators' graphs)."""

    def __repr__(self) -> str:
        blocks = f", blocks={len(self.layout.blocks)}" if len(self.layout.blocks) > 1 else ""
        return (
            f"{type(self).__name__}(P={self.shape[0]}, N={self.num_data}, "
            f"dtype={self.dtype}, device={self.device}{blocks})"
        )
