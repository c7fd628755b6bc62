"""Kronecker-factor algebra shared by KFAC and EKFAC; no dense Kronecker product is formed.

A block acts on V (D₂, D₁) (``views`` map its flat parameters to V: weight rows, a
transposed weight, a bias column), its rows in g groups of d₂ (a grouped convolution):
  KFAC:   K = ⊕_g G_g ⊗ A_g,                       K vec(V) = vec(G_g V_g A_g) per group
  EKFAC:  K = ⊕_g (Q_G ⊗ Q_A) diag(vec E) (…)ᵀ,    K vec(V) = vec(Q_G ((Q_Gᵀ V Q_A) ⊙ E) Q_Aᵀ)
A factor is dense (n, n), grouped (g, n, n) or diagonal (n,) / (g, n) (its eigenbasis is I:
an embedding's input factor, forward-only's G = I). A fallback block is F ⊗ [1] with F the
exact (p, p) block or diag(d), on V (p, 1). With G = Q_G diag(λ_G) Q_Gᵀ, A likewise, KFAC is
the EKFAC form with E = λ_G λ_Aᵀ, so the damped inverse, trace, log-determinant and
Frobenius norm all follow from the eigenvalues: (K + δI)⁻¹ = Q ((Qᵀ V Q) / (E + δ)) Qᵀ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from curvops.core.eigh import eigh_with_fallback


class SymFactor:
    """A symmetric PSD factor with its eigendecomposition, computed once on demand.

    ``mat``: (n, n), (g, n, n) per group, or its diagonal (n,) / (g, n) with ``diagonal``.
    """

    def __init__(
        self,
        mat: torch.Tensor,
        eig: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        diagonal: bool = False,
    ) -> None:
        self.mat, self.diagonal = mat, diagonal
        self._eig = eig

    @classmethod
    def one(cls, like: torch.Tensor) -> SymFactor:
        """The 1x1 factor [[1]] (the input factor of a bias or a fallback block)."""
        one = torch.ones(1, 1, dtype=like.dtype, device=like.device)
        return cls(one, (one[0], one))

    @property
    def grouped(self) -> bool:
        return self.mat.ndim == (2 if self.diagonal else 3)

    @property
    def groups(self) -> int:
        return self.mat.shape[0] if self.grouped else 1

    @property
    def size(self) -> int:
        """n, per group."""
        return self.mat.shape[-1]

    def batched(self) -> torch.Tensor:
        """(g, n, n), or (g, n) when diagonal."""
        return self.mat if self.grouped else self.mat.unsqueeze(0)

    @property
    def eig(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(λ descending, Q), shaped like ``mat`` ((n,), (n, n); grouped (g, n), (g, n, n));
        a diagonal factor: (its entries, None). λ below n·eps·max λ is exactly 0."""
        if self._eig is None:
            values, Q = self._compute_eig()
            eps = values.shape[-1] * torch.finfo(values.dtype).eps
            tol = eps * values.abs().amax(dim=-1, keepdim=True)
            self._eig = (torch.where(values > tol, values, torch.zeros_like(values)), Q)
        return self._eig

    def _compute_eig(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.diagonal:
            return self.mat, None
        if not self.grouped:
            return eigh_with_fallback(self.mat)
        pairs = [eigh_with_fallback(m) for m in self.mat]
        return torch.stack([v for v, _ in pairs]), torch.stack([q for _, q in pairs])

    def batched_eig(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(λ (g, n), Q (g, n, n) or None)."""
        values, Q = self.eig
        if self.grouped:
            return values, Q
        return values.unsqueeze(0), None if Q is None else Q.unsqueeze(0)

    def left(self, V: torch.Tensor) -> torch.Tensor:
        """M V for V (k, g, n, m)."""
        M = self.batched()
        return V * M.unsqueeze(-1) if self.diagonal else M @ V

    def right(self, V: torch.Tensor) -> torch.Tensor:
        """V M for V (k, g, m, n)."""
        M = self.batched()
        return V * M.unsqueeze(-2) if self.diagonal else V @ M

    def traces(self) -> torch.Tensor:
        """tr M per group (g,)."""
        M = self.batched()
        return M.sum(-1) if self.diagonal else torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)

    def squared_norms(self) -> torch.Tensor:
        """‖M‖²_F per group (g,)."""
        return self.batched().square().flatten(1).sum(1)


@dataclass(frozen=True)
class View:
    """How a parameter fills the block's V (D₂, D₁): "rows" (weight.reshape(D₂, -1)),
    "cols" (a (D₁, D₂) weight, transposed) or "bias" (a column of length D₂)."""

    how: str
    numel: int


class KroneckerBlock:
    """One diagonal block: ⊕_g G_g ⊗ A_g (KFAC) or its eigenbasis with eigenvalues E (EKFAC).

    ``params``: indices of the block's parameters (weight, then bias if joint); ``views``:
    how each fills V (None: a fallback block F ⊗ [1] on the concatenated parameters (p, 1));
    ``exact``: a fallback block (heuristic damping does not apply: its inverse is exact).
    """

    def __init__(
        self,
        params: tuple[int, ...],
        G: SymFactor,
        A: SymFactor,
        E: torch.Tensor | None = None,
        views: tuple[View, ...] | None = None,
        exact: bool = False,
    ) -> None:
        self.params, self.G, self.A, self.E = params, G, A, E
        self.views, self.exact = views, exact

    @property
    def shape(self) -> tuple[int, int]:
        """(D₂, D₁) of V, all groups' rows."""
        return self.G.groups * self.G.size, self.A.size

    # ---------------------------------------------------------------- flat <-> V
    def to_matrix(self, V: torch.Tensor) -> torch.Tensor:
        """The block's flat entries (k, p_b) -> V (k, D₂, D₁)."""
        if self.views is None:
            return V.unsqueeze(2)
        k, D2 = V.shape[0], self.shape[0]
        parts = torch.split(V, [v.numel for v in self.views], dim=1)
        mats = [_to_rows(part, view.how, k, D2) for part, view in zip(parts, self.views)]
        return torch.cat(mats, dim=2) if len(mats) > 1 else mats[0]

    def from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """V (k, D₂, D₁) -> the block's flat entries (k, p_b)."""
        if self.views is None:
            return R.squeeze(2)
        k, D2 = R.shape[0], R.shape[1]
        widths = [v.numel // D2 for v in self.views]
        parts = torch.split(R, widths, dim=2)
        flat = [
            (p.transpose(1, 2) if view.how == "cols" else p).reshape(k, -1)
            for p, view in zip(parts, self.views)
        ]
        return torch.cat(flat, dim=1) if len(flat) > 1 else flat[0]

    # ---------------------------------------------------------------- products
    def _grouped(self, V: torch.Tensor) -> torch.Tensor:
        """(k, D₂, D₁) -> (k, g, d₂, D₁)."""
        return V.reshape(V.shape[0], self.G.groups, self.G.size, V.shape[2])

    def eigenvalues(self) -> torch.Tensor:
        """(g, d₂, D₁): E for EKFAC, λ_G λ_Aᵀ per group for KFAC."""
        if self.E is not None:
            return self.E.reshape(self.G.groups, self.G.size, self.A.size)
        (lg, _), (la, _) = self.G.batched_eig(), self.A.batched_eig()
        return lg.unsqueeze(-1) * la.unsqueeze(-2)

    def eigenvectors(self, idx: torch.Tensor) -> torch.Tensor:
        """The block's eigenvectors (n, p_b) at flat positions ``idx`` (n,) of
        ``eigenvalues()``: entry (g, i, j) is Q_G,g e_i ⊗ Q_A e_j, as the block's flat entries."""
        g, d2, D1 = self.G.groups, self.G.size, self.A.size
        n = len(idx)
        dtype, device = self.G.mat.dtype, self.G.mat.device
        W = torch.zeros(n, g * d2 * D1, dtype=dtype, device=device)
        W[torch.arange(n, device=device), idx.to(device)] = 1.0
        W = W.reshape(n, g, d2, D1)
        QG, QA = self.G.batched_eig()[1], self.A.batched_eig()[1]
        W = W if QG is None else QG @ W
        W = W if QA is None else W @ QA.transpose(-1, -2)
        return self.from_matrix(W.reshape(n, g * d2, D1))

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """K V for V (k, D₂, D₁)."""
        if self.E is None:
            return self.G.left(self.A.right(self._grouped(V))).reshape(V.shape)
        return self._in_basis(V, self.eigenvalues())

    def _in_basis(self, V: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        """Q_G ((Q_Gᵀ V Q_A) ⊙ D) Q_Aᵀ per group, D (g, d₂, D₁)."""
        QG, QA = self.G.batched_eig()[1], self.A.batched_eig()[1]
        W = self._grouped(V)
        W = W if QG is None else QG.transpose(-1, -2) @ W
        W = (W if QA is None else W @ QA) * D
        W = W if QG is None else QG @ W
        W = W if QA is None else W @ QA.transpose(-1, -2)
        return W.reshape(V.shape)

    def inverse_matmat(self, V: torch.Tensor, damping: float, heuristic: bool) -> torch.Tensor:
        """(K + δI)⁻¹ V exactly; with ``heuristic``, (G + √δ/π I)⁻¹ V (A + π√δ I)⁻¹ instead
        (a fallback block is always inverted exactly)."""
        if heuristic and not self.exact:
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
        """(λ_G + √δ/π)(λ_A + π√δ)ᵀ per group, π = √((tr A / D₁) / (tr G / D₂))
        (Martens & Grosse 2015)."""
        (lg, _), (la, _) = self.G.batched_eig(), self.A.batched_eig()
        mean_g, mean_a = lg.mean(-1, keepdim=True), la.mean(-1, keepdim=True)
        ok = (mean_g > 0) & (mean_a > 0)
        pi = torch.where(ok, torch.sqrt(mean_a / mean_g.clamp(min=1e-300)), torch.ones_like(mean_g))
        root = math.sqrt(damping)
        return (lg + root / pi).unsqueeze(-1) * (la + root * pi).unsqueeze(-2)

    # ---------------------------------------------------------------- scalars
    def trace(self) -> float:
        if self.E is not None:
            return float(self.E.sum())
        return float((self.G.traces() * self.A.traces()).sum())

    def frobenius_sq(self) -> float:
        if self.E is not None:
            return float((self.E**2).sum())
        return float((self.G.squared_norms() * self.A.squared_norms()).sum())

    def logdet(self, damping: float) -> float:
        """Σ log(eigenvalues + δ); -inf when the damped block is singular."""
        values = self.eigenvalues().clamp(min=0) + damping
        if bool((values <= 0).any()):
            return -math.inf
        return float(torch.log(values).sum())


def _to_rows(part: torch.Tensor, how: str, k: int, D2: int) -> torch.Tensor:
    """One parameter's flat entries (k, n) as columns of V (k, D₂, ·)."""
    if how == "cols":
        return part.reshape(k, -1, D2).transpose(1, 2)
    return part.reshape(k, D2, -1)
