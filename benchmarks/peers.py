"""Adapters to the peers' public APIs: each builds a full-data matvec (P,) -> (P,).

A builder returns ``None`` and a note when its package is missing or does not support
the problem; the benchmark prints the note and goes on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from benchmarks.floor import MatVec, _split
from benchmarks.problems import Problem

Builder = Callable[[Problem], MatVec]


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def curvlinops_hessian(problem: Problem) -> MatVec:
    from curvlinops import HessianLinearOperator

    params = list(problem.model.parameters())
    op = HessianLinearOperator(
        problem.model, problem.loss_fn, params, problem.data, check_deterministic=False
    )
    return lambda v: op @ v


def curvlinops_ggn(problem: Problem) -> MatVec:
    from curvlinops import GGNLinearOperator

    params = list(problem.model.parameters())
    op = GGNLinearOperator(
        problem.model, problem.loss_fn, params, problem.data, check_deterministic=False
    )
    return lambda v: op @ v


def pyhessian_hessian(problem: Problem) -> MatVec:
    from pyhessian import hessian

    cuda = next(problem.model.parameters()).is_cuda
    h = hessian(problem.model, problem.loss_fn, dataloader=problem.data, cuda=cuda)
    params = list(problem.model.parameters())

    def mv(v: torch.Tensor) -> torch.Tensor:
        _, hv = h.dataloader_hv_product(_split(v, params))
        return torch.cat([x.reshape(-1) for x in hv])

    return mv


def eigenthings_hessian(problem: Problem) -> MatVec:
    from hessian_eigenthings.operators.hessian import HessianOperator

    loss_fn = problem.loss_fn
    op = HessianOperator(problem.model, problem.data, lambda m, b: loss_fn(m(b[0]), b[1]))
    return op.matvec  # averages batch means: exact here, the batches are equal-sized


def eigenthings_ggn(problem: Problem) -> MatVec:
    from hessian_eigenthings.operators.ggn import GGNOperator

    loss_fn = problem.loss_fn
    op = GGNOperator(
        problem.model, problem.data, lambda m, b: m(b[0]), lambda out, b: loss_fn(out, b[1])
    )
    return op.matvec


def nngeometry_ggn(problem: Problem) -> MatVec:
    """nngeometry's implicit Fisher, variant "classif_logits" (= the GGN of mean CE)."""
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM
    from nngeometry.object.pspace import PMatImplicit
    from nngeometry.object.vector import PVector
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.cat([x for x, _ in problem.data])
    y = torch.cat([t for _, t in problem.data])
    loader = DataLoader(TensorDataset(X, y), batch_size=len(problem.data[0][1]))
    lc = LayerCollection.from_model(problem.model)
    device = str(X.device)
    fim = FIM(problem.model, loader, PMatImplicit, variant="classif_logits", device=device)
    order = _nngeometry_order(problem, lc)

    def mv(v: torch.Tensor) -> torch.Tensor:
        res = fim.mv(PVector(lc, vector_repr=v[order])).to_torch()
        out = torch.empty_like(v)
        out[order] = res
        return out

    return mv


def _nngeometry_order(problem: Problem, lc) -> torch.Tensor:
    """Index map: nngeometry's flat order (its layers, weight then bias) -> model order."""
    starts, offset = {}, 0
    for name, p in problem.model.named_parameters():
        starts[name] = (offset, p.numel())
        offset += p.numel()
    index = []
    for layer_id, layer in lc.layers.items():
        for suffix in ("weight", "bias") if layer.bias is not None else ("weight",):
            start, n = starts[f"{layer_id}.{suffix}"]
            index.append(torch.arange(start, start + n))
    return torch.cat(index).to(next(problem.model.parameters()).device)


# name -> (module to import, builder); one table per curvature
HESSIAN_PEERS: dict[str, tuple[str, Builder]] = {
    "curvlinops": ("curvlinops", curvlinops_hessian),
    "pyhessian": ("pyhessian", pyhessian_hessian),
    "eigenthings": ("hessian_eigenthings", eigenthings_hessian),
}
GGN_PEERS: dict[str, tuple[str, Builder]] = {
    "curvlinops": ("curvlinops", curvlinops_ggn),
    "eigenthings": ("hessian_eigenthings", eigenthings_ggn),
    "nngeometry": ("nngeometry", nngeometry_ggn),
}


def build(table: dict[str, tuple[str, Builder]], problem: Problem) -> dict[str, MatVec]:
    """The peers of ``table`` that are installed and accept ``problem``; notes the rest."""
    out = {}
    for name, (module, builder) in table.items():
        if not available(module):
            print(f"  note: {name} is not installed ({module}); skipped")
            continue
        try:
            out[name] = builder(problem.copy())  # hooks stay on the copy
        except Exception as err:  # a peer that cannot take this model is skipped, not fatal
            print(f"  note: {name} cannot run on {problem.name}: {type(err).__name__}: {err}")
    return out
