"""Every timed tool by curvature and name: curvops, the torch floor and the peers."""

from __future__ import annotations

import functools

import curvops
from benchmarks import floor, peers
from benchmarks.floor import MatVec
from benchmarks.problems import Problem


def _hessian(problem: Problem, **options) -> MatVec:
    op = curvops.HessianOperator(problem.model, problem.loss_fn, problem.data, **options)
    return op.torch_matmat


def _ggn(problem: Problem, **options) -> MatVec:
    op = curvops.GGNOperator(problem.model, problem.loss_fn, problem.data, **options)
    return op.torch_matmat


# curvops first (its default, then the variants compared in RESULTS.md), then the floor
OURS: dict[str, dict[str, peers.Builder]] = {
    "hessian": {
        "curvops": _hessian,
        "curvops[double_backward]": functools.partial(_hessian, hvp="double_backward"),
        "curvops[forward_over_reverse]": functools.partial(_hessian, hvp="forward_over_reverse"),
    },
    "ggn": {"curvops": _ggn},
}
FLOOR: dict[str, dict[str, peers.Builder]] = {
    "hessian": {"torch double-backward": floor.double_backward_hvp},
    "ggn": {"torch jvp/vjp": floor.ggn_reference},
}
PEERS = {"hessian": peers.HESSIAN_PEERS, "ggn": peers.GGN_PEERS}
# peers whose public API multiplies a matrix (P, k) in one call
MATMAT_PEERS = {"curvlinops"}


def add_before(directory: str) -> None:
    """Add "curvops@before": the operators in ``directory``/hessian.py and ggn.py (an older
    version of curvops/operators, e.g. from ``git show REV:curvops/operators/hessian.py``)."""
    import importlib.util
    from pathlib import Path

    for curvature, (file, cls) in {
        "hessian": ("hessian.py", "HessianOperator"),
        "ggn": ("ggn.py", "GGNOperator"),
    }.items():
        spec = importlib.util.spec_from_file_location(f"before_{curvature}", Path(directory) / file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        op_cls = getattr(module, cls)

        def builder(problem: Problem, op_cls=op_cls) -> MatVec:
            return op_cls(problem.model, problem.loss_fn, problem.data).torch_matmat

        OURS[curvature]["curvops@before"] = builder


def build_all(
    curvature: str, problem: Problem, variants: bool = True
) -> tuple[dict[str, MatVec], set[str]]:
    """All tools for ``curvature`` on ``problem`` (missing peers noted) and the peer names;
    ``variants=False`` keeps only curvops's default of its own tools."""
    ours = OURS[curvature] if variants else {"curvops": OURS[curvature]["curvops"]}
    tools = {name: b(problem) for name, b in ours.items()}
    tools.update({name: b(problem) for name, b in FLOOR[curvature].items()})
    found = peers.build(PEERS[curvature], problem)
    tools.update(found)
    return tools, set(found)


def build_one(curvature: str, name: str, problem: Problem) -> MatVec:
    """One tool by name (for the memory probe, which runs each tool in its own process)."""
    for table in (OURS[curvature], FLOOR[curvature]):
        if name in table:
            return table[name](problem)
    return PEERS[curvature][name][1](problem)
