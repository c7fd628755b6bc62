"""Runs on each rank of a gloo process group spawned by tests/test_distributed.py."""

from __future__ import annotations

import torch
import torch.distributed as dist
from models import make_problem

import curvops

SIZES = (5, 3, 2, 4)


def build_operators(model, loss_fn, data, **kw):
    """name -> operator, for every operator under test (each sees ``data``)."""
    ops = {
        "hessian": curvops.HessianOperator(model, loss_fn, data, **kw),
        "hessian_blocks": curvops.HessianOperator(model, loss_fn, data, blocks="layer", **kw),
        "ggn": curvops.GGNOperator(model, loss_fn, data, **kw),
        "mc": curvops.GGNOperator(model, loss_fn, data, mode="mc", mc_samples=3, **kw),
        "empirical": curvops.GGNOperator(model, loss_fn, data, mode="empirical", **kw),
    }
    return ops


def dense_results(model, loss_fn, data, **kw) -> dict[str, torch.Tensor]:
    ops = build_operators(model, loss_fn, data, **kw)
    out = {name: op.to_dense() for name, op in ops.items()}
    out["num_data"] = torch.tensor(ops["hessian"].num_data)
    return out


def run(rank: int, world_size: int, init_file: str, out_dir: str, shards) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        model, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=SIZES)
        mine = [data[i] for i in shards[rank]]
        results = dense_results(model, loss_fn, mine, process_group=dist.group.WORLD)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
