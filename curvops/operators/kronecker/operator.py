"""KroneckerOperator: the shared shell of KFAC and EKFAC (contract, closed forms, state).

Subclasses compute their ``KroneckerBlock`` list in ``compute()`` from the data (once, at
construction); products, the damped inverse, trace, log-determinant and Frobenius norm then
use only the blocks. After the model's parameters or buffers change (an optimizer step;
see ``ParameterWatch``), a product recomputes (``on_stale="recompute"``) or raises
``StaleOperatorError`` (``on_stale="raise"``, the default here).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from curvops.core import checks
from curvops.core.checks import check_count
from curvops.core.errors import StaleOperatorError
from curvops.core.losses import output_loss
from curvops.core.options import Approx, FallbackMode, FisherType, OnStale, check_choice
from curvops.interface import SymmetricTorchOperator
from curvops.operators.base import CurvatureOperator
from curvops.operators.chunks import by_chunks
from curvops.operators.kronecker.algebra import KroneckerBlock
from curvops.operators.kronecker.capture import BatchCollector
from curvops.operators.kronecker.state import check_layers, check_settings
from curvops.operators.kronecker.tying import make_plan

__all__ = ["KroneckerInverse", "KroneckerOperator", "StaleOperatorError"]


class KroneckerOperator(CurvatureOperator):
    """Block-diagonal Kronecker-factored curvature; see ``KFACOperator`` for the arguments."""

    is_psd = True

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        fisher: FisherType = "type2",
        mc_samples: int = 1,
        seed: int = 0,
        approx: Approx = "expand",
        separate_weight_and_bias: bool = True,
        fallback: FallbackMode = "auto",
        on_stale: OnStale = "raise",
        chunk_size: int | None = None,
        params=None,
        num_data: int | None = None,
        batch_size_fn=None,
        progress: bool = False,
        check_deterministic: bool = False,
        process_group: Any = None,
        math_attention: bool = True,
    ) -> None:
        check_choice("fisher", fisher, FisherType)
        check_choice("approx", approx, Approx)
        self.fallback = check_choice("fallback", fallback, FallbackMode)
        check_count("mc_samples", mc_samples, 1)
        self.fisher, self.mc_samples, self.seed, self.approx = fisher, mc_samples, seed, approx
        self.separate_weight_and_bias = separate_weight_and_bias
        loss = output_loss(loss_fn)
        params = list(params) if params is not None else None
        chosen = params or [p for p in model.parameters() if p.requires_grad]
        self.plan = make_plan(model, chosen, separate_weight_and_bias, fallback)
        super().__init__(
            model, loss_fn, data, params=params, blocks=self.plan.blocks,
            num_data=num_data, batch_size_fn=batch_size_fn, progress=progress,
            process_group=process_group, math_attention=math_attention, chunk_size=chunk_size,
            on_stale=on_stale,
        )  # fmt: skip
        index_of = {id(p): i for i, p in enumerate(self.layout.params)}
        self.layers, self.fallbacks = self.plan.layers, self.plan.fallbacks
        for layer in self.layers:
            layer.weight = index_of.get(id(layer.weight_param))
            layer.bias = index_of.get(id(layer.bias_param))
        for fb in self.fallbacks:
            fb.indices = tuple(index_of[id(p)] for p in fb.params)
        self._collector = BatchCollector(
            self.plan.sites, loss, self._forward, self._forward_context, fisher, mc_samples, seed
        )
        self._blocks: list[KroneckerBlock] = []
        self.compute()
        if check_deterministic:
            self._check_deterministic()

    def _check_deterministic(self) -> None:
        """Compute the factors from a second full data pass and compare them with the first."""
        first = {
            (layer, key): t.clone()
            for layer, tensors in self._state_tensors().items()
            for key, t in tensors.items()
        }
        self.compute()
        for layer, tensors in self._state_tensors().items():
            for key, t in tensors.items():
                if key.startswith("Q"):  # eigenvectors: signs are arbitrary, E and G, A decide
                    continue
                checks.assert_deterministic(
                    first[layer, key], t, f"factor {key} of layer '{layer}'"
                )

    # ---------------------------------------------------------------- to implement
    def compute(self) -> None:
        """(Re)compute the blocks from the data at the current parameters; idempotent."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Recompute after the model moved (same as ``compute`` unless overridden)."""
        self.compute()

    def _state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _set_state_tensors(self, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        raise NotImplementedError

    @property
    def structures(self) -> dict[str, str]:
        """Block name -> "kronecker", "kronecker-diagonal-A" (an embedding's weight: A is
        diagonal), "exact" or "diagonal" (fallback blocks), in block order."""
        return dict(zip(self.layout.block_names, self.plan.structures))

    @property
    def fallback_reasons(self) -> dict[str, str]:
        """Fallback block name -> why it has no Kronecker structure."""
        return {fb.name: fb.reason for fb in self.fallbacks}

    def _current_blocks(self) -> list[KroneckerBlock]:
        """The blocks, recomputed first (or refused) if the model changed since (see base)."""
        self._ensure_fresh()
        return self._blocks

    # ---------------------------------------------------------------- products
    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """K @ M for M (P,) or (P, k): per block G V A (KFAC) or its eigen-form (EKFAC)."""
        return self._apply(M, lambda blk, V: blk.matmat(V), f"product of {type(self).__name__}")

    def _apply(self, M: torch.Tensor, fn, what: str) -> torch.Tensor:
        """fn(block, V) for every block, ``chunk_size`` columns of M at a time."""
        M = self._check_torch_input(M)
        blocks = self._current_blocks()
        squeeze = M.ndim == 1
        M = M.unsqueeze(1) if squeeze else M
        out = by_chunks(lambda C: self._apply_blocks(blocks, C, fn), M, self.chunk_size)
        checks.check_finite(out, what)
        return out.squeeze(1) if squeeze else out

    def _apply_blocks(self, blocks: list[KroneckerBlock], M: torch.Tensor, fn) -> torch.Tensor:
        out = torch.zeros_like(M)
        slices = self.layout.slices
        for blk in blocks:
            V = torch.cat([M[slices[i]].T for i in blk.params], dim=1)  # (k, p_b)
            self._place(out, blk, blk.from_matrix(fn(blk, blk.to_matrix(V))), slice(None))
        return out

    def _place(self, out: torch.Tensor, blk: KroneckerBlock, R: torch.Tensor, cols) -> None:
        """Write the block's flat entries R (n, p_b) into the columns ``cols`` of out (P, ·)."""
        slices, sizes = self.layout.slices, self.layout.sizes
        for i, part in zip(blk.params, torch.split(R, [sizes[i] for i in blk.params], dim=1)):
            out[slices[i], cols] = part.T

    def top_eigenpairs(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest eigenvalues (k,), descending, and orthonormal eigenvectors (P, k) in
        closed form: K is block-diagonal with blocks (Q_G ⊗ Q_A) diag(λ) (Q_G ⊗ Q_A)ᵀ,
        λ = λ_G ⊗ λ_A (KFAC) or E (EKFAC); no products."""
        check_count("k", k, 1)
        P = self.shape[0]
        if k > P:
            raise ValueError(f"k must be <= P = {P}, got {k}")
        blocks = self._current_blocks()
        picks: list[tuple[float, int, int]] = []  # (λ, block, flat index in the block)
        for b, blk in enumerate(blocks):
            lam = blk.eigenvalues().reshape(-1)
            values, idx = torch.topk(lam, min(k, lam.numel()))
            picks += [(v, b, i) for v, i in zip(values.tolist(), idx.tolist())]
        picks = sorted(picks, key=lambda t: -t[0])[:k]
        first = blocks[0].G.mat
        U = torch.zeros(P, k, dtype=first.dtype, device=first.device)
        for b, blk in enumerate(blocks):
            cols = [c for c, (_, pb, _) in enumerate(picks) if pb == b]
            if cols:
                idx = torch.tensor([picks[c][2] for c in cols])
                self._place(U, blk, blk.eigenvectors(idx), cols)
        values = torch.tensor([v for v, _, _ in picks], dtype=first.dtype)
        return values, U

    def inverse(self, damping: float, heuristic: bool = False) -> KroneckerInverse:
        """(K + δI)⁻¹ as a LinearOperator, exact through the factors' eigendecompositions.

        ``heuristic=True`` (KFAC only) gives the cheaper, approximate π-damped inverse
        (G + √δ/π I)⁻¹ ⊗ (A + π√δ I)⁻¹ of Martens & Grosse (2015), π² = (tr A/D₁)/(tr G/D₂).
        """
        return KroneckerInverse(self, _check_damping(damping), heuristic)

    # ---------------------------------------------------------------- closed forms
    def trace(self) -> float:
        """tr K = Σ_blocks tr G · tr A (EKFAC: Σ E; fallback blocks: tr F)."""
        return sum(blk.trace() for blk in self._current_blocks())

    def frobenius_norm(self) -> float:
        """‖K‖_F = √(Σ_blocks ‖G‖²_F ‖A‖²_F) (EKFAC: ‖E‖_F; fallback blocks: ‖F‖_F)."""
        return math.sqrt(sum(blk.frobenius_sq() for blk in self._current_blocks()))

    def logdet(self, damping: float = 0.0) -> float:
        """log det(K + δI) = Σ log(λ_G λ_Aᵀ + δ) (EKFAC: Σ log(E + δ)); -inf if singular."""
        damping = _check_damping(damping)
        return sum(blk.logdet(damping) for blk in self._current_blocks())

    # ---------------------------------------------------------------- state
    def _settings(self) -> dict[str, Any]:
        """Every setting saved with the factors (plain strings, numbers and bools)."""
        return {
            "fisher": self.fisher,
            "mc_samples": self.mc_samples,
            "seed": self.seed,
            "approx": self.approx,
            "separate_weight_and_bias": self.separate_weight_and_bias,
            "fallback": self.fallback,
            "num_data": self.num_data,
        }

    def _matrix_settings(self) -> dict[str, Any]:
        """The settings that shape the matrix: a loaded state must match them all."""
        settings = self._settings()
        if self.fisher != "mc":  # the sampling settings matter to MC labels only
            settings.pop("mc_samples")
            settings.pop("seed")
        return settings

    def state_dict(self) -> dict[str, Any]:
        """Factors and settings as plain tensors / strings (``torch.load(weights_only=True)``)."""
        return {
            "kind": type(self).__name__,
            **self._settings(),
            "layers": {
                name: {k: t.detach().clone() for k, t in tensors.items()}
                for name, tensors in self._state_tensors().items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the factors saved by ``state_dict``, after checking them; nothing is adopted.

        Refused with a ValueError naming the setting and both values: another operator
        class, fisher, approx, separate_weight_and_bias, fallback, num_data, with
        fisher="mc" also mc_samples and seed (EKFAC: also correction and eigenbasis).
        Refused naming the layer (or fallback block) and the factor: missing, extra or
        misshapen factors, NaN / inf, a G, A or exact fallback block F that is not symmetric
        or not PSD (per group when grouped), a negative diagonal factor (A_diag, G_diag,
        F_diag), an EKFAC basis Q that is not orthonormal, a negative E.
        The checks take one eigvalsh per factor (O(D³), like the factors' eigendecompositions).
        """
        if state.get("kind") != type(self).__name__:
            raise ValueError(
                f"this is the state of a {state.get('kind')!r}, not of a {type(self).__name__}: "
                "load a state saved by the same operator class"
            )
        check_settings(state, self._matrix_settings())
        check_layers(state.get("layers"), self._state_tensors())
        loaded = {
            name: {k: t.to(device=self.device, dtype=self.torch_dtype) for k, t in ts.items()}
            for name, ts in state["layers"].items()
        }
        self._set_state_tensors(loaded)
        self._mark_fresh()


class KroneckerInverse(SymmetricTorchOperator):
    """(K + δI)⁻¹ of a Kronecker operator, following its current factors (see ``inverse``)."""

    def __init__(self, op: KroneckerOperator, damping: float, heuristic: bool) -> None:
        self.op, self.damping, self.heuristic = op, damping, heuristic
        self.device, self.torch_dtype = op.device, op.torch_dtype
        super().__init__(dtype=op.dtype, shape=op.shape)

    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        return self.op._apply(
            M,
            lambda blk, V: blk.inverse_matmat(V, self.damping, self.heuristic),
            "damped inverse product",
        )


def _check_damping(damping) -> float:
    damping = float(damping)
    if not damping >= 0 or damping == float("inf"):
        raise ValueError(
            f"damping must be >= 0 and finite (the δ of (K + δI)⁻¹), got {damping}; "
            "K is only positive semi-definite, so a negative δ can make K + δI singular"
        )
    return damping
