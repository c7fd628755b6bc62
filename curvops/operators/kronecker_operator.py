"""KroneckerOperator: the shared shell of KFAC and EKFAC (contract, closed forms, state).

Subclasses compute their ``KroneckerBlock`` list in ``compute()`` from the data (once, at
construction); products, the damped inverse, trace, log-determinant and Frobenius norm then
use only the blocks. The operator records the parameters' version counters: after they
change (an optimizer step), a product recomputes (``on_stale="recompute"``) or raises
``StaleOperatorError`` (``on_stale="raise"``, the default).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from curvops.operators import checks
from curvops.operators.base import CurvatureOperator
from curvops.operators.kfac_factors import (
    FISHER_TYPES,
    BatchCollector,
    group_by_module,
    make_layers,
    param_blocks,
)
from curvops.operators.kronecker import KroneckerBlock
from curvops.operators.losses import output_loss

APPROX = ("expand", "reduce")
ON_STALE = ("raise", "recompute")


class StaleOperatorError(RuntimeError):
    """The model's parameters changed after the factors were computed."""


class KroneckerOperator(CurvatureOperator):
    """Block-diagonal Kronecker-factored curvature; see ``KFACOperator`` for the arguments."""

    is_psd = True

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        fisher: str = "type2",
        mc_samples: int = 1,
        seed: int = 0,
        approx: str = "expand",
        separate_weight_and_bias: bool = True,
        on_stale: str = "raise",
        params=None,
        num_data: int | None = None,
        batch_size_fn=None,
        progress: bool = False,
        check_deterministic: bool = False,
        process_group: Any = None,
        math_attention: bool = True,
    ) -> None:
        _check_choice("fisher", fisher, FISHER_TYPES)
        _check_choice("approx", approx, APPROX)
        _check_choice("on_stale", on_stale, ON_STALE)
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.fisher, self.mc_samples, self.seed, self.approx = fisher, mc_samples, seed, approx
        self.separate_weight_and_bias, self.on_stale = separate_weight_and_bias, on_stale
        loss = output_loss(loss_fn)
        params = list(params) if params is not None else None
        chosen = params or [p for p in model.parameters() if p.requires_grad]
        groups = group_by_module(model, chosen)
        super().__init__(
            model, loss_fn, data, params=params, blocks=param_blocks(groups, separate_weight_and_bias),
            num_data=num_data, batch_size_fn=batch_size_fn, progress=progress,
            process_group=process_group, math_attention=math_attention,
        )  # fmt: skip
        index_of = {id(p): i for i, p in enumerate(self.layout.params)}
        self.layers = make_layers(groups, index_of, separate_weight_and_bias)
        self._collector = BatchCollector(
            self.layers, loss, self._forward, self._forward_context, fisher, mc_samples, seed
        )
        self._blocks: list[KroneckerBlock] = []
        self.compute()
        if check_deterministic:
            self._check_deterministic()

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

    # ---------------------------------------------------------------- staleness
    def _fingerprint(self) -> tuple:
        return tuple((p._version, p.data_ptr()) for p in self.layout.params)

    def _mark_fresh(self) -> None:
        self._fresh_at = self._fingerprint()

    @property
    def is_stale(self) -> bool:
        """True when the parameters changed since the factors were computed."""
        return self._fingerprint() != self._fresh_at

    def _current_blocks(self) -> list[KroneckerBlock]:
        if self.is_stale:
            if self.on_stale == "raise":
                raise StaleOperatorError(
                    f"{type(self).__name__} is stale: the model's parameters changed after its "
                    "factors were computed (e.g. an optimizer step). Call op.refresh(), or build "
                    "the operator with on_stale='recompute'"
                )
            self.refresh()
        return self._blocks

    # ---------------------------------------------------------------- products
    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """K @ M for M (P,) or (P, k): per block G V A (KFAC) or its eigen-form (EKFAC)."""
        return self._apply(M, lambda blk, V: blk.matmat(V), f"product of {type(self).__name__}")

    def _apply(self, M: torch.Tensor, fn, what: str) -> torch.Tensor:
        M = self._check_torch_input(M)
        blocks = self._current_blocks()
        squeeze = M.ndim == 1
        M = M.unsqueeze(1) if squeeze else M
        out = torch.zeros_like(M)
        slices, k = self.layout.slices, M.shape[1]
        for blk in blocks:
            D2 = blk.shape[0]
            V = torch.cat([M[slices[i]].T.reshape(k, D2, -1) for i in blk.params], dim=2)
            R = fn(blk, V)
            widths = [self.layout.sizes[i] // D2 for i in blk.params]
            for i, part in zip(blk.params, torch.split(R, widths, dim=2)):
                out[slices[i]] = part.reshape(k, -1).T
        checks.check_finite(out, what)
        return out.squeeze(1) if squeeze else out

    def inverse(self, damping: float, heuristic: bool = False) -> KroneckerInverse:
        """(K + δI)⁻¹ as a LinearOperator, exact through the factors' eigendecompositions.

        ``heuristic=True`` (KFAC only) gives the cheaper, approximate π-damped inverse
        (G + √δ/π I)⁻¹ ⊗ (A + π√δ I)⁻¹ of Martens & Grosse (2015), π² = (tr A/D₁)/(tr G/D₂).
        """
        damping = float(damping)
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        return KroneckerInverse(self, damping, heuristic)

    # ---------------------------------------------------------------- closed forms
    def trace(self) -> float:
        """tr K = Σ_blocks tr G · tr A (EKFAC: Σ E)."""
        return sum(blk.trace() for blk in self._current_blocks())

    def frobenius_norm(self) -> float:
        """‖K‖_F = √(Σ_blocks ‖G‖²_F ‖A‖²_F) (EKFAC: ‖E‖_F)."""
        return math.sqrt(sum(blk.frobenius_sq() for blk in self._current_blocks()))

    def logdet(self, damping: float = 0.0) -> float:
        """log det(K + δI) = Σ log(λ_G λ_Aᵀ + δ) (EKFAC: Σ log(E + δ)); -inf if singular."""
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        return sum(blk.logdet(float(damping)) for blk in self._current_blocks())

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Factors and settings as plain tensors / strings (``torch.load(weights_only=True)``)."""
        return {
            "kind": type(self).__name__,
            "fisher": self.fisher,
            "approx": self.approx,
            "separate_weight_and_bias": self.separate_weight_and_bias,
            "num_data": self.num_data,
            "layers": {
                name: {k: t.detach().clone() for k, t in tensors.items()}
                for name, tensors in self._state_tensors().items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore factors saved by ``state_dict``; refuses factors that do not fit the model."""
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"state of a {state.get('kind')!r}, not of a {type(self).__name__}")
        mine, theirs = self._state_tensors(), state["layers"]
        if set(mine) != set(theirs):
            raise ValueError(
                f"the saved factors are for layers {sorted(theirs)}, this operator has layers "
                f"{sorted(mine)}"
            )
        for name, tensors in mine.items():
            for key, t in tensors.items():
                saved = theirs[name].get(key)
                if saved is None or tuple(saved.shape) != tuple(t.shape):
                    shape = None if saved is None else tuple(saved.shape)
                    raise ValueError(
                        f"layer '{name}': saved factor {key} has shape {shape}, the model needs "
                        f"{tuple(t.shape)}; the factors do not fit this model"
                    )
        loaded = {
            name: {k: t.to(device=self.device, dtype=self.torch_dtype) for k, t in ts.items()}
            for name, ts in theirs.items()
        }
        self._set_state_tensors(loaded)
        self._mark_fresh()


class KroneckerInverse(LinearOperator):
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

    def _matmat(self, X):
        M = torch.as_tensor(np.ascontiguousarray(X, dtype=self.dtype), device=self.device)
        return self.torch_matmat(M).cpu().numpy()

    def _matvec(self, x):
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, x):
        return self._matvec(x)

    def _adjoint(self):
        return self


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
