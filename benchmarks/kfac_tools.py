"""KFAC / EKFAC builders (curvops, curvlinops, nngeometry): each constructs its approximation
of the type-2 GGN / Fisher of mean cross-entropy and returns a ``Built`` whose products take
and return vectors in the model's parameter order. Some tools defer work to the first
product (curvlinops computes its factors there), so a construction is timed up to and
including the first product."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import curvops
from benchmarks.peers import _nngeometry_order
from benchmarks.problems import Problem


@dataclass
class Built:
    """A constructed approximation: ``matmat`` (P, k) -> (P, k); ``joint``: weight and bias in
    one Kronecker block per layer (else separate blocks)."""

    matmat: Callable[[torch.Tensor], torch.Tensor]
    joint: bool


def _curvops(cls, joint: bool = False) -> Callable[[Problem], Built]:
    def build(problem: Problem) -> Built:
        op = cls(problem.model, problem.loss_fn, problem.data, separate_weight_and_bias=not joint)
        return Built(op.torch_matmat, joint=joint)

    return build


def _curvlinops(name: str) -> Callable[[Problem], Built]:
    def build(problem: Problem) -> Built:
        import curvlinops

        params = list(problem.model.parameters())
        op = getattr(curvlinops, name)(
            problem.model, problem.loss_fn, params, problem.data,
            fisher_type="type-2", check_deterministic=False,
        )  # fmt: skip
        return Built(lambda M: op @ M, joint=False)  # factors come with the first product

    return build


def _nngeometry(representation: str) -> Callable[[Problem], Built]:
    def build(problem: Problem) -> Built:
        from nngeometry.layercollection import LayerCollection
        from nngeometry.metrics import FIM
        from nngeometry.object import pspace
        from nngeometry.object.vector import PVector

        loader = _loader(problem)
        lc = LayerCollection.from_model(problem.model)
        device = str(next(problem.model.parameters()).device)
        kind = getattr(pspace, representation)
        F = FIM(problem.model, loader, kind, variant="classif_logits", device=device)
        if representation == "PMatEKFAC":
            F.update_diag(loader)  # without it, nngeometry's EKFAC equals its KFAC
        order = _nngeometry_order(problem, lc)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(v)
            out[order] = F.mv(PVector(lc, vector_repr=v[order])).to_torch()
            return out

        return Built(lambda M: torch.stack([matvec(c) for c in M.T], 1), joint=True)

    return build


def _loader(problem: Problem):
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.cat([x for x, _ in problem.data])
    y = torch.cat([t for _, t in problem.data])
    return DataLoader(TensorDataset(X, y), batch_size=len(problem.data[0][1]))


def exact_ggn(problem: Problem) -> Callable[[torch.Tensor], torch.Tensor]:
    """curvops's exact GGN product (the fastest exact one, see RESULTS.md)."""
    return curvops.GGNOperator(problem.model, problem.loss_fn, problem.data).torch_matmat


# kind -> tool -> (module that must be installed, builder); curvops first (its default, then
# weight and bias in one block per layer, as nngeometry)
TOOLS: dict[str, dict[str, tuple[str, Callable[[Problem], Built]]]] = {
    "kfac": {
        "curvops": ("curvops", _curvops(curvops.KFACOperator)),
        "curvops[joint]": ("curvops", _curvops(curvops.KFACOperator, joint=True)),
        "curvlinops": ("curvlinops", _curvlinops("KFACLinearOperator")),
        "nngeometry": ("nngeometry", _nngeometry("PMatKFAC")),
    },
    "ekfac": {
        "curvops": ("curvops", _curvops(curvops.EKFACOperator)),
        "curvops[joint]": ("curvops", _curvops(curvops.EKFACOperator, joint=True)),
        "curvlinops": ("curvlinops", _curvlinops("EKFACLinearOperator")),
        "nngeometry": ("nngeometry", _nngeometry("PMatEKFAC")),
    },
}
