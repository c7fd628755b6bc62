"""A hand-written type-2 KFAC / EKFAC (expand) for Linear and Conv2d: the benchmark's reference.

Written from the definitions, independently of curvops (F.unfold patches, autograd.grad to
the layer outputs), for cross-entropy with reduction "mean" over N data points:
  b_nrc = ∂f_n/∂z_nr ᵀ S_n[:, c] / √N,  S_n S_nᵀ = diag(p_n) − p_n p_nᵀ  (S_n = diag(√p) − p √pᵀ)
  A = 1/(N R) Σ_{n,r} a_nr a_nrᵀ,   G = Σ_{n,r,c} b_nrc b_nrcᵀ,   block of the weight: G ⊗ A
  a separate bias: G (its input is the constant 1); a joint one: a augmented with a 1
  EKFAC: E = Σ_{n,c} (Q_Gᵀ g_nc Q_A)²,  g_nc = Σ_r b_nrc a_nrᵀ
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.problems import Problem


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _inputs(module: nn.Module, x: torch.Tensor, joint: bool) -> torch.Tensor:
    """(B, R, D₁) inputs of the weight (patches for a conv), a 1 appended when ``joint``."""
    if isinstance(module, nn.Conv2d):
        a = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        a = a.transpose(1, 2)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.cat([a, torch.ones_like(a[..., :1])], -1) if joint else a


def _grads(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """(B, R, D₂) gradients of the layer output."""
    if isinstance(module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def _batch(problem: Problem, X: torch.Tensor, joint: bool):
    """Inputs a (B, R, D₁) per layer and, per class column c, b (B, R, D₂) per layer."""
    layers, acts, outs = _layers(problem.model), {}, {}

    def hook(i):
        def fn(module, args, output):
            acts[i], outs[i] = _inputs(module, args[0].detach(), joint), output

        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        f = problem.model(X)
    finally:
        for h in handles:
            h.remove()
    p = torch.softmax(f.detach(), dim=1)
    S = torch.diag_embed(p.sqrt()) - p.unsqueeze(2) * p.sqrt().unsqueeze(1)  # (B, C, C)
    S = S / problem.num_data**0.5
    per_class = []
    for c in range(f.shape[1]):
        gs = torch.autograd.grad(f, [outs[i] for i in range(len(layers))], S[:, :, c], True)
        per_class.append([_grads(m, g) for m, g in zip(layers, gs)])
    return [acts[i] for i in range(len(layers))], per_class


class FloorKFAC:
    """Factors of every Linear / Conv2d layer; ``matvec`` in the model's parameter order."""

    def __init__(self, problem: Problem, joint: bool = False, ekfac: bool = False) -> None:
        self.problem, self.joint = problem, joint
        self.layers = _layers(problem.model)
        n = len(self.layers)
        self.A, self.G, count = [0.0] * n, [0.0] * n, [0] * n
        for X, _ in problem.data:
            acts, per_class = _batch(problem, X, joint)
            for i, a in enumerate(acts):
                a2 = a.reshape(-1, a.shape[-1]).double()
                self.A[i] = self.A[i] + a2.T @ a2
                count[i] += a2.shape[0]
            for bs in per_class:
                for i, b in enumerate(bs):
                    b2 = b.reshape(-1, b.shape[-1]).double()
                    self.G[i] = self.G[i] + b2.T @ b2
        self.A = [A / c for A, c in zip(self.A, count)]
        self.E = self._correction() if ekfac else None

    def _correction(self) -> list[tuple[torch.Tensor, ...]]:
        """Per layer (Q_G, Q_A, E_weight, E_bias or None)."""
        bases = [(torch.linalg.eigh(G)[1], torch.linalg.eigh(A)[1]) for G, A in zip(self.G, self.A)]
        E = [[0.0, 0.0] for _ in self.layers]
        for X, _ in self.problem.data:
            acts, per_class = _batch(self.problem, X, self.joint)
            for bs in per_class:
                for i, (a, b) in enumerate(zip(acts, bs)):
                    QG, QA = bases[i]
                    bt, at = b.double() @ QG, a.double() @ QA
                    E[i][0] = E[i][0] + _squared_grads(bt, at)
                    E[i][1] = E[i][1] + bt.sum(1).square().sum(0)  # bias: input 1, basis [1]
        return [(QG, QA, e[0], e[1]) for (QG, QA), e in zip(bases, E)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The approximation times v (P,), in float64 (v's dtype on return)."""
        out, offset, parts = torch.zeros_like(v, dtype=torch.float64), 0, []
        for i, m in enumerate(self.layers):
            W = m.weight.reshape(m.weight.shape[0], -1)
            nb = 0 if m.bias is None else m.bias.numel()
            parts.append((i, offset, W.shape, nb))
            offset += W.numel() + nb
        for i, start, shape, nb in parts:
            V = v[start : start + shape[0] * shape[1]].double().reshape(shape)
            vb = v[start + V.numel() : start + V.numel() + nb].double()
            W_out, b_out = self._block(i, V, vb)
            out[start : start + V.numel()] = W_out.reshape(-1)
            out[start + V.numel() : start + V.numel() + nb] = b_out
        return out.to(v.dtype)

    def _block(self, i: int, V: torch.Tensor, vb: torch.Tensor):
        if self.joint:
            Vj = torch.cat([V, vb.unsqueeze(1)], 1)
            Oj = self._apply(i, Vj, 0)
            return Oj[:, :-1], Oj[:, -1]
        return self._apply(i, V, 0), self._apply(i, vb.unsqueeze(1), 1)[:, 0]

    def _apply(self, i: int, V: torch.Tensor, part: int) -> torch.Tensor:
        if self.E is None:
            return self.G[i] @ V @ self.A[i] if part == 0 else self.G[i] @ V
        QG, QA, Ew, Eb = self.E[i]
        if part == 1:
            return QG @ ((QG.T @ V) * Eb.unsqueeze(1))
        return QG @ ((QG.T @ V @ QA) * Ew) @ QA.T


def _squared_grads(bt: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Σ_n (Σ_r bt_nr at_nrᵀ)² for bt (B, R, D₂), at (B, R, D₁); with R = 1 the square of an
    outer product is the outer product of the squares, (bt²)ᵀ at² (no (B, D₂, D₁) tensor)."""
    if bt.shape[1] == 1:
        return bt[:, 0].square().T @ at[:, 0].square()
    return (bt.transpose(1, 2) @ at).square().sum(0)
