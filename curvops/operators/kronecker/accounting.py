"""Every parameter's gradient is the sum over the uses curvops sees, or a clear error.

Once per ``compute()``, on the first points of the first batch (``CHECK_POINTS``, in an
extra forward pass, so that no batch's inputs need to be kept): for a seeded random u, autograd's
∇_θ ⟨u, f⟩ must equal Σ_uses J_useᵀ b_use with b_use = J_{f ← use}ᵀ u — the per-use
products the factors are made of. Otherwise a parameter is used where no hook sees it
(multiplied functionally outside its module, ``x @ module.weight.T``; or counted twice),
and its block would be silently wrong: a ValueError names it.
"""

from __future__ import annotations

import torch

from curvops.core.data import Batch
from curvops.operators.kronecker.capture import BatchCollector, backprop, split_by_use
from curvops.operators.kronecker.fallback import use_grads
from curvops.operators.kronecker.hooks import Use

CHECK_POINTS = 2  # points of the first batch the check runs on (2: a shared input still shows)


def check_batch(
    collector: BatchCollector, batch: Batch, params: list[torch.Tensor], names: list[str]
) -> None:
    """``check_accounted`` on the first ``CHECK_POINTS`` points of ``batch``."""
    small = batch.head(CHECK_POINTS)
    collector.needs_clones(small)
    bp = collector(small, 1.0, max_columns=1)
    check_accounted(bp.f, bp.uses, params, names)


def check_accounted(
    f: torch.Tensor, uses: list[Use], params: list[torch.Tensor], names: list[str]
) -> None:
    """Raise a ValueError naming the first parameter whose gradient the uses miss."""
    gen = torch.Generator(device=f.device).manual_seed(0)
    u = torch.randn(f.shape, generator=gen, dtype=f.dtype, device=f.device)
    outputs = [o for use in uses for o in use.outputs]
    true = torch.autograd.grad(f, params, u, retain_graph=True, allow_unused=True)
    seen = [torch.zeros_like(p) for p in params]
    if outputs:
        index = {id(p): i for i, p in enumerate(params)}
        wanted = {id(p): p for p in params}
        for use, grads in zip(uses, split_by_use(uses, backprop(f, outputs, u.unsqueeze(0)))):
            found = use_grads(use, grads, wanted, summed=True)
            for pid, g in found.items():
                seen[index[pid]] += g[0, 0]
    eps = torch.finfo(f.dtype).eps
    tol = max(1e4 * eps, 1e-10)
    scale = max((float(t.norm()) for t in true if t is not None), default=0.0)
    for name, t, s in zip(names, true, seen):
        t = torch.zeros_like(s) if t is None else t
        diff = float((t - s).norm())
        noise = 1e2 * eps * scale  # round-off of a gradient that vanishes (a bias before a norm)
        if diff > tol * max(float(t.norm()), float(s.norm())) and diff > noise:
            raise ValueError(
                f"parameter '{name}': its gradient is not the sum over the calls of the modules "
                f"that own it (relative difference {diff / max(float(t.norm()), 1e-300):.2g}): it "
                "is used where curvops sees no call (multiplied functionally outside its module, "
                "e.g. x @ module.weight.T), so its block would be wrong. Pass params= without it"
            )
