"""A tracked SGD run on one rank of a gloo group (spawned by tests/track/test_track_distributed.py)."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from models import make_problem

from curvops.track import CurvatureTracker

SIZES = (5, 3, 2, 4)
STEPS, EVERY = 6, 2


def tracked_run(data, process_group=None, log=None) -> list[dict]:
    """Full-batch SGD on ``data`` (this rank's shard; gradients summed over the ranks)."""
    model, loss_fn, _ = make_problem("mlp_tanh", "ce", sizes=SIZES)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    kw = {"trace": "hutchinson", "layers": True, "tol": 1e-10, "optimizer": opt, "log": log}
    tracker = CurvatureTracker(model, loss_fn, data, EVERY, 3, process_group=process_group, **kw)
    for _ in range(STEPS):
        g = tracker.operator.unflatten(tracker.operator.gradient())
        for p, gp in zip(model.parameters(), g):
            p.grad = gp.clone()
        opt.step()
        tracker.step()
    return [r.to_dict() for r in tracker.records]


def run(rank: int, world_size: int, init_file: str, out_dir: str, shards) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        _, _, data = make_problem("mlp_tanh", "ce", sizes=SIZES)
        mine = [data[i] for i in shards[rank]]
        records = tracked_run(mine, dist.group.WORLD, log=f"{out_dir}/log.jsonl")
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(records, f)
    finally:
        dist.destroy_process_group()
