"""EKFACOperator: KFAC's eigenbases with eigenvalues re-fitted to per-example gradients.

With KFAC's factors G = Q_G Λ_G Q_Gᵀ, A = Q_A Λ_A Q_Aᵀ and per-example gradients
g_nk = Σ_r b_nrk a_nrᵀ (D₂, D₁) of the backpropagated vectors (George et al. 2018):
  K = (Q_G ⊗ Q_A) diag(vec E) (Q_G ⊗ Q_A)ᵀ,   E = Σ_{n,k} (Q_Gᵀ g_nk Q_A)²  (elementwise)
i.e. E is the exact diagonal of the block's GGN / Fisher in KFAC's eigenbasis. E comes from
  per-example gradients:  memory B·D₁·D₂ per batch, or
  the Gramian contraction E_ij = Σ_n Σ_{s,t} (Σ_k b̃_nsk,i b̃_ntk,i)(ã_ns,j ã_nt,j),
  memory B·R²(D₁ + D₂), chosen when R²(D₁ + D₂) < D₁D₂ (R = positions per example).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from curvops.core.eigh import refresh_eigenbasis
from curvops.core.options import Correction, EigenbasisMethod, check_choice
from curvops.distributed import all_reduce_sum_many
from curvops.operators.kronecker.correction import (
    gramian_b,
    gramian_product,
    per_example_correction,
    rotate,
)
from curvops.operators.kronecker.kfac import KFACOperator
from curvops.operators.kronecker.layers import augment


class EKFACOperator(KFACOperator):
    """Eigenvalue-corrected KFAC (P, P), PSD; corrected at construction (two data passes).

    Args (besides those of ``KFACOperator``):
        eigenbasis: "eigh" (exact eigenvectors of the factors) or "qr": ``refresh`` warm-starts
            the bases from the previous ones by orthogonal (QR) iteration, the cheap update
            of SOAP / Shampoo-style optimizers (the first bases come from eigh).
        correction: "auto" (by memory, per layer), "per_example" or "gramian".
    ``self.strategies`` tells which correction each block used, keyed by the name of the
    block's first parameter (e.g. "0.weight", "0.bias").
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        *,
        eigenbasis: EigenbasisMethod = "eigh",
        correction: Correction = "auto",
        **kw: Any,
    ) -> None:
        self.eigenbasis: EigenbasisMethod = check_choice("eigenbasis", eigenbasis, EigenbasisMethod)
        self.correction: Correction = check_choice("correction", correction, Correction)
        self._bases: list[tuple] = []  # per layer (G basis, A basis or None); [] before compute
        self.strategies: dict[str, str] = {}
        super().__init__(model, loss_fn, data, **kw)

    def compute(self) -> None:
        """Factors, bases (eigh) and eigenvalue correction from scratch; idempotent."""
        self._compute(warm=False, steps=0)

    def refresh(self, steps: int = 1) -> None:
        """Recompute after the model moved; with eigenbasis="qr" the bases are warm-started
        from the current ones by ``steps`` QR iterations, otherwise recomputed by eigh."""
        self._compute(warm=self.eigenbasis == "qr" and bool(self._bases), steps=steps)

    def _compute(self, warm: bool, steps: int) -> None:
        super().compute()  # KFAC factors G, A
        old: list[tuple] = self._bases if warm else [(None, None)] * len(self.layers)
        method = "qr" if warm else "eigh"
        self._bases = []
        for G, A, (old_g, old_a) in zip(self.G, self.A, old):
            basis_g = refresh_eigenbasis([G], [_q(old_g)], method, steps)[0]
            basis_a = (
                refresh_eigenbasis([A], [_q(old_a)], method, steps)[0] if A is not None else None
            )
            self._bases.append((basis_g, basis_a))
        self.E = self._eigencorrection()
        self._build_blocks(self.E, self._bases)
        self._mark_fresh()

    def _eigencorrection(self) -> list[list[torch.Tensor]]:
        """E per layer and block (weight or joint first, then a separate bias), summed over data."""
        E = [
            [blk.G.mat.new_zeros(blk.shape) for blk in self._layer_blocks(i)]
            for i in range(len(self.layers))
        ]
        for batch in self._loop:
            self._correct_batch(batch, E)
        flat = iter(all_reduce_sum_many([e for parts in E for e in parts], self.process_group))
        return [[next(flat) for _ in parts] for parts in E]

    def _correct_batch(self, batch, E: list[list[torch.Tensor]]) -> None:
        """Add one batch's E. One output vector at a time (no stacked copies); a Gramian
        block sums Σ_k bt bt over the batch's vectors first, then takes one product."""
        rotated: list[list[torch.Tensor]] = [[] for _ in self.layers]

        def on_input(i: int, a: torch.Tensor) -> None:  # in the forward pass: a is not kept
            rotated[i] = self._rotated_inputs(i, a)

        w = self._batch_weight(batch)
        _, chunks = self._collector(batch, w, max_columns=1, on_input=on_input)
        pending: dict[tuple[int, int], torch.Tensor] = {}  # Σ_k bt bt of Gramian blocks
        for bs in chunks:
            for i, b in enumerate(bs):
                if b is None:
                    continue
                bt = rotate(b, self._bases[i][0][1])  # (1, B, R, D₂) in the basis of G
                names = [self.layout.names[blk.params[0]] for blk in self._layer_blocks(i)]
                for j, (at, name) in enumerate(zip(rotated[i], names)):
                    if self._strategy(name, bt, at) == "per_example":
                        E[i][j] += per_example_correction(bt, at)
                    elif (i, j) in pending:
                        pending[i, j] += gramian_b(bt)
                    else:
                        pending[i, j] = gramian_b(bt)
        for (i, j), gb in pending.items():
            E[i][j] += gramian_product(gb, rotated[i][j])

    def _layer_blocks(self, i: int) -> list:
        """The KFAC blocks of layer i (weight or joint, then a separate bias)."""
        return [
            blk
            for blk in self._blocks
            if blk.params[0] in (self.layers[i].weight, self.layers[i].bias)
        ]

    def _rotated_inputs(self, i: int, a: torch.Tensor | None) -> list[torch.Tensor]:
        """Inputs (B, R, D₁) in the basis of A, per block of layer i (bias: ones)."""
        if a is None:
            return []
        layer, basis_a = self.layers[i], self._bases[i][1]
        out = []
        if layer.weight is not None:
            out.append((augment(a) if layer.joint else a) @ basis_a[1])
        if layer.bias is not None and not layer.joint:
            out.append(torch.ones_like(a[..., :1]))
        return out

    def _strategy(self, name: str, bt: torch.Tensor, at: torch.Tensor) -> str:
        """The block's correction strategy (recorded in ``self.strategies``)."""
        R, D1, D2 = at.shape[1], at.shape[2], bt.shape[3]
        strategy = self.correction
        if strategy == "auto":
            strategy = "gramian" if R * R * (D1 + D2) < D1 * D2 else "per_example"
        self.strategies[name] = strategy
        return strategy

    def _settings(self) -> dict[str, Any]:
        """KFAC's settings, and how E and the bases were computed (both refused if different)."""
        return {**super()._settings(), "correction": self.correction, "eigenbasis": self.eigenbasis}

    def _state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        out = super()._state_tensors()
        for layer, (basis_g, basis_a), E in zip(self.layers, self._bases, self.E):
            out[layer.name]["Q_G"] = basis_g[1]
            if basis_a is not None:
                out[layer.name]["Q_A"] = basis_a[1]
            out[layer.name].update({f"E{j}": e for j, e in enumerate(E)})
        return out

    def _set_state_tensors(self, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        self.G = [layers[layer.name]["G"] for layer in self.layers]
        self.A = [layers[layer.name].get("A") for layer in self.layers]
        self._bases, self.E = [], []
        for layer, G, A in zip(self.layers, self.G, self.A):
            st = layers[layer.name]
            basis_a = _with_values(A, st["Q_A"]) if A is not None else None
            self._bases.append((_with_values(G, st["Q_G"]), basis_a))
            self.E.append([st[k] for k in sorted(st) if k.startswith("E")])
        self._build_blocks(self.E, self._bases)


def _q(basis):
    return None if basis is None else basis[1]


def _with_values(M: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(QᵀMQ), Q): the Rayleigh quotients of a saved basis."""
    return (Q * (M @ Q)).sum(dim=0), Q
