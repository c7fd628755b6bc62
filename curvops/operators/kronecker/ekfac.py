"""EKFACOperator: KFAC's eigenbases with eigenvalues re-fitted to per-example gradients.

With KFAC's factors G = Q_G Λ_G Q_Gᵀ, A = Q_A Λ_A Q_Aᵀ and per-example gradients
g_nk = Σ_{u,r} b_nrk a_nrᵀ (D₂, D₁) of the backpropagated vectors, over all uses u of the
layer (George et al. 2018):
  K = (Q_G ⊗ Q_A) diag(vec E) (Q_G ⊗ Q_A)ᵀ,   E = Σ_{n,k} (Q_Gᵀ g_nk Q_A)²  (elementwise)
i.e. E is the exact diagonal of the block's GGN / Fisher in KFAC's eigenbasis (so EKFAC's
trace is the exact block trace). Grouped layers have one basis per group, an embedding's
Q_A is I (A is diagonal). E comes from (``eigencorrection``)
  per-example gradients:  memory B·D₁·D₂ per batch, or
  the Gramian contraction E_ij = Σ_n Σ_{s,t} (Σ_k b̃_nsk,i b̃_ntk,i)(ã_ns,j ã_nt,j),
  memory B·R²(D₁ + D₂), chosen when R²(D₁ + D₂) < D₁D₂ (R = positions per example).
Fallback blocks are KFAC's (exact or diagonal). forward-only: EKFAC is KFAC (G = I, whose
per-position Fisher I ⊗ a aᵀ is Kronecker already).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from curvops.core.eigh import eigh_with_fallback, refresh_eigenbasis
from curvops.core.options import Correction, EigenbasisMethod, check_choice
from curvops.distributed import all_reduce_sum_many
from curvops.operators.kronecker.eigencorrection import CorrectionPass
from curvops.operators.kronecker.kfac import KFACOperator
from curvops.operators.kronecker.shared_factors import check_source, source_bases, take_factors

Basis = tuple[torch.Tensor, torch.Tensor | None] | None  # (λ, Q) of a factor; None: I


class EKFACOperator(KFACOperator):
    """Eigenvalue-corrected KFAC (P, P), PSD; corrected at construction (two data passes).

    Args (besides those of ``KFACOperator``):
        eigenbasis: "eigh" (exact eigenvectors of the factors) or "qr": ``refresh`` warm-starts
            the bases from the previous ones by orthogonal (QR) iteration, the cheap update
            of SOAP / Shampoo-style optimizers (the first bases come from eigh).
        correction: "auto" (by memory, per layer), "per_example" or "gramian".
        kfac: a ``KFACOperator`` of the same model, data, loss object, parameters and
            settings: its factors and their eigendecompositions are reused (shared, not
            copied), so construction makes one data pass and no ``eigh`` of its own
            (``curvops.operators.kronecker.shared_factors``); later refreshes compute their own.
    ``self.strategies`` tells which correction each block used, keyed by the name of the
    block's first parameter (e.g. "0.weight", "0.bias"; an embedding's: "scatter").
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        *,
        eigenbasis: EigenbasisMethod = "eigh",
        correction: Correction = "auto",
        kfac: KFACOperator | None = None,
        **kw: Any,
    ) -> None:
        self.eigenbasis: EigenbasisMethod = check_choice("eigenbasis", eigenbasis, EigenbasisMethod)
        self.correction: Correction = check_choice("correction", correction, Correction)
        self._bases: list[tuple[Basis, Basis]] = []  # per layer (G basis, A basis)
        self.E: list[list[torch.Tensor]] = []
        self.strategies: dict[str, str] = {}
        self._source = kfac  # checked, then used by the first compute only
        super().__init__(model, loss_fn, data, **kw)

    def compute(self) -> None:
        """Factors, bases (eigh) and eigenvalue correction from scratch; idempotent."""
        self._compute(warm=False, steps=0)

    def refresh(self, steps: int = 1) -> None:
        """Recompute after the model moved; with eigenbasis="qr" the bases are warm-started
        from the current ones by ``steps`` QR iterations, otherwise recomputed by eigh."""
        self._compute(warm=self.eigenbasis == "qr" and bool(self._bases), steps=steps)

    def _compute(self, warm: bool, steps: int) -> None:
        source, self._source = self._source, None
        if source is None:
            super().compute()  # KFAC factors G, A and the fallback blocks
        else:
            check_source(self, source)
            take_factors(self, source)
        if self.fisher == "forward-only":
            self._bases, self.E = [], []
            self._mark_fresh()
            return
        self._bases = source_bases(source) if source is not None else self._own_bases(warm, steps)
        self._drop_factors()  # before the correction pass: its peak memory is EKFAC's
        self.E = self._eigencorrection()
        self._build_blocks(self.E, self._bases)
        self._mark_fresh()

    def _own_bases(self, warm: bool, steps: int) -> list[tuple[Basis, Basis]]:
        """Per layer (G basis, A basis) of this operator's factors: eigh, or ``steps`` QR
        iterations from the current bases (``warm``)."""
        old = self._bases if warm else [(None, None)] * len(self.layers)
        method = "qr" if warm else "eigh"
        return [
            (_basis(G, og, method, steps, G.ndim < (2 if lay.groups == 1 else 3)),
             _basis(A, oa, method, steps, lay.embedding) if A is not None else None)
            for lay, G, A, (og, oa) in zip(self.layers, self.G, self.A, old)
        ]  # fmt: skip

    def _eigencorrection(self) -> list[list[torch.Tensor]]:
        """E per layer and block (weight or joint first, then a separate bias), summed over data."""
        shapes: list[list[tuple[int, ...]]] = []
        names: list[list[str]] = []
        for i, layer in enumerate(self.layers):
            parts = self._layer_parts(i, layer)
            g, d2 = layer.groups, layer.out_dim // layer.groups
            shapes.append(
                [(g, d2, A.size) if g > 1 else (layer.out_dim, A.size) for _, A, _ in parts]
            )
            names.append([self.layout.names[params[0]] for params, _, _ in parts])
        run = CorrectionPass(
            self.plan, self._collector, self._bases, shapes, self.correction, names,
            self.layout.params[0],
        )  # fmt: skip
        E = run.run(self._loop, self._batch_weight)
        self.strategies = run.strategies
        flat = iter(all_reduce_sum_many([e for parts in E for e in parts], self.process_group))
        return [[next(flat) for _ in parts] for parts in E]

    def _settings(self) -> dict[str, Any]:
        """KFAC's settings, and how E and the bases were computed (both refused if different)."""
        return {**super()._settings(), "correction": self.correction, "eigenbasis": self.eigenbasis}

    def _state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        out = super()._state_tensors()
        G, A = self._rebuilt()
        for layer, g, a in zip(self.layers, G, A):
            for key, t in (("G", g), ("A", a)):
                if key in out[layer.name] and t is not None:
                    out[layer.name][key] = t
        for layer, (basis_g, basis_a), E in zip(self.layers, self._bases, self.E):
            for key, basis in (("Q_G", basis_g), ("Q_A", basis_a)):
                if basis is not None and basis[1] is not None:
                    out[layer.name][key] = basis[1]
            out[layer.name].update({f"E{j}": e for j, e in enumerate(E)})
        return out

    def _set_state_tensors(self, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        super()._set_state_tensors(layers)
        if self.fisher == "forward-only":
            return
        self._bases, self.E = [], []
        for layer, G, A in zip(self.layers, self.G, self.A):
            st = layers[layer.name]
            basis_a = _with_values(A, st["Q_A"]) if A is not None and "Q_A" in st else None
            basis_g = _with_values(G, st["Q_G"]) if "Q_G" in st else None
            self._bases.append((basis_g, basis_a))
            self.E.append([st[k] for k in sorted(st) if k.startswith("E")])
        self._drop_factors()
        self._build_blocks(self.E, self._bases)

    def _drop_factors(self) -> None:
        """Keep only the shapes of the dense G and A once their bases exist: products, the
        inverse and the scalars need Q and E alone, and G = Q diag(λ) Qᵀ is rebuilt for
        ``factors`` and ``state_dict`` (to round-off). Saves their memory (the head's A of a
        CNN: 16 MiB) during the correction pass and after."""
        self._blocks = []  # KFAC's blocks hold the dense factors; EKFAC's are built next
        for i, (basis_g, basis_a) in enumerate(self._bases):
            if basis_g is not None:
                self.G[i] = _shape_only(self.G[i])
            A = self.A[i]
            if basis_a is not None and A is not None:
                self.A[i] = _shape_only(A)

    def _rebuilt(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """(G, A) per layer: Q diag(λ) Qᵀ from the bases where the factors were dropped."""
        G = [_from_basis(b) if b is not None else g for g, (b, _) in zip(self.G, self._bases)]
        A = [
            _from_basis(b) if b is not None and a is not None else a
            for a, (_, b) in zip(self.A, self._bases)
        ]
        return G, A

    @property
    def factors(self) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
        """KFAC's factors (see ``KFACOperator.factors``), rebuilt from EKFAC's bases."""
        self._current_blocks()
        G, A = self._rebuilt()
        return [(layer.name, g, a) for layer, g, a in zip(self.layers, G, A)]


def _basis(M: torch.Tensor, old: Basis, method: str, steps: int, diagonal: bool) -> Basis:
    """(λ, Q) of a factor (grouped (g, n, n): per group, stacked); None for a diagonal one."""
    if diagonal:
        return None
    if method == "eigh" and M.ndim == 2:  # a Gram matrix: no symmetrised copy of it
        return eigh_with_fallback(M, symmetrize=False)
    if M.ndim == 2:
        Q_old = None if old is None else old[1]
        return refresh_eigenbasis([M], [Q_old], method, steps)[0]
    olds = [None] * M.shape[0] if old is None else list(old[1])  # type: ignore[arg-type]
    pairs = refresh_eigenbasis(list(M), olds, method, steps)
    return torch.stack([v for v, _ in pairs]), torch.stack([q for _, q in pairs])


def _with_values(M: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(QᵀMQ), Q): the Rayleigh quotients of a saved basis (per group when grouped)."""
    return (Q * (M @ Q)).sum(dim=-2), Q


def _shape_only(M: torch.Tensor) -> torch.Tensor:
    """A stand-in of M's shape and dtype holding one number (a zero-stride view)."""
    return M.new_zeros(()).expand(M.shape)


def _from_basis(basis) -> torch.Tensor:
    """Q diag(λ) Qᵀ ((g, n, n) per group)."""
    values, Q = basis
    return (Q * values.unsqueeze(-2)) @ Q.transpose(-1, -2)
