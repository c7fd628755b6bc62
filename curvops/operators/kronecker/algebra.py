"""Kronecker-factor algebra shared by KFAC and EKFAC; no dense Kronecker product is formed.

A block acts on the row-major vec of V (D₂, D₁) (the layout of ``weight.reshape(D₂, -1)``):
  KFAC:   K = G ⊗ A,                          K vec(V) = vec(G V A)
  EKFAC:  K = (Q_G ⊗ Q_A) diag(vec E) (…)ᵀ,    K vec(V) = vec(Q_G ((Q_Gᵀ V Q_A) ⊙ E) Q_Aᵀ)
With G = Q_G diag(λ_G) Q_Gᵀ and A = Q_A diag(λ_A) Q_Aᵀ, KFAC is the EKFAC form with
E = λ_G λ_Aᵀ, so the damped inverse, trace, log-determinant and Frobenius norm all follow
from the eigenvalues: (K + δI)⁻¹ vec(V) = vec(Q_G ((Q_Gᵀ V Q_A) / (E + δ)) Q_Aᵀ).
"""

from __future__ import annotations

import math

import torch

from curvops.core.eigh import eigh_with_fallback


class SymFactor:
    """A symmetric PSD factor M (n, n) with its eigendecomposition, computed once on demand."""

    def __init__(self, mat: torch.Tensor, eig: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.mat = mat
        self._eig = eig

    @classmethod
    def one(cls, like: torch.Tensor) -> SymFactor:
        """The 1x1 factor [[1]] (the input factor of a separate bias)."""
        one = torch.ones(1, 1, dtype=like.dtype, device=like.device)
        return cls(one, (one[0], one))

    @property
    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ (n,) descending, Q (n, n)); λ below n·eps·max λ is set to exactly 0."""
        if self._eig is None:
            values, Q = eigh_with_fallback(self.mat)
            tol = values.shape[0] * torch.finfo(values.dtype).eps * values.abs().max()
            self._eig = (torch.where(values > tol, values, torch.zeros_like(values)), Q)
        return self._eig


class KroneckerBlock:
    """One diagonal block of KFAC (G ⊗ A) or EKFAC (eigen-basis of G ⊗ A with eigenvalues E).

    ``params``: indices of the parameters in the block (weight, then bias if joint).
    """

    def __init__(
        self, params: tuple[int, ...], G: SymFactor, A: SymFactor, E: torch.Tensor | None = None
    ) -> None:
        self.params, self.G, self.A, self.E = params, G, A, E

    @property
    def shape(self) -> tuple[int, int]:
        return self.G.mat.shape[0], self.A.mat.shape[0]

    def eigenvalues(self) -> torch.Tensor:
        """(D₂, D₁): E for EKFAC, λ_G λ_Aᵀ for KFAC (the eigenvalues of the block)."""
        if self.E is not None:
            return self.E
        return torch.outer(self.G.eig[0], self.A.eig[0])

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """K V for V (k, D₂, D₁)."""
        if self.E is None:
            return self.G.mat @ V @ self.A.mat
        return self._in_basis(V, self.E)

    def _in_basis(self, V: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        """Q_G ((Q_Gᵀ V Q_A) ⊙ D) Q_Aᵀ."""
        QG, QA = self.G.eig[1], self.A.eig[1]
        return QG @ ((QG.T @ V @ QA) * D) @ QA.T

    def inverse_matmat(self, V: torch.Tensor, damping: float, heuristic: bool) -> torch.Tensor:
        """(K + δI)⁻¹ V exactly; with ``heuristic``, (G + √δ/π I)⁻¹ V (A + π√δ I)⁻¹ instead."""
        if heuristic:
            if self.E is not None:
                raise ValueError(
                    "heuristic (π-)damping applies to Kronecker factors; EKFAC's damped inverse "
                    "is exact and as cheap: use heuristic=False"
                )
            denom = self._pi_damped(damping)
        else:
            denom = self.eigenvalues() + damping
        if bool((denom <= 0).any()):
            raise ValueError(
                f"the {self.shape[0]}x{self.shape[1]} Kronecker block is singular (zero "
                "eigenvalues): pass damping > 0 to invert it"
            )
        return self._in_basis(V, 1.0 / denom)

    def _pi_damped(self, damping: float) -> torch.Tensor:
        """(λ_G + √δ/π)(λ_A + π√δ)ᵀ, π = √((tr A / D₁) / (tr G / D₂)) (Martens & Grosse 2015)."""
        (lg, _), (la, _) = self.G.eig, self.A.eig
        mean_g, mean_a = float(lg.mean()), float(la.mean())
        pi = math.sqrt(mean_a / mean_g) if mean_g > 0 and mean_a > 0 else 1.0
        root = math.sqrt(damping)
        return torch.outer(lg + root / pi, la + root * pi)

    def trace(self) -> float:
        if self.E is not None:
            return float(self.E.sum())
        return float(torch.trace(self.G.mat) * torch.trace(self.A.mat))

    def frobenius_sq(self) -> float:
        if self.E is not None:
            return float((self.E**2).sum())
        return float((self.G.mat**2).sum() * (self.A.mat**2).sum())

    def logdet(self, damping: float) -> float:
        """Σ log(eigenvalues + δ); -inf when the damped block is singular."""
        values = self.eigenvalues().clamp(min=0) + damping
        if bool((values <= 0).any()):
            return -math.inf
        return float(torch.log(values).sum())
