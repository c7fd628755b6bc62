"""Two gloo processes on CPU: sharded operators equal the single-process ones on all data."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_worker import SIZES, dense_results, run
from models import make_problem

import curvops

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")


def _spawn(tmp_path, shards):
    mp.spawn(run, args=(2, str(tmp_path / "init"), str(tmp_path), shards), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("shards", [((0, 1, 2), (3,)), ((0, 1, 2, 3), ())], ids=["3+1", "4+empty"])
def test_sharded_equals_single_process(tmp_path, shards):
    per_rank = _spawn(tmp_path, shards)
    model, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=SIZES)
    single = dense_results(model, loss_fn, data)
    for name, expected in single.items():
        for rank, results in enumerate(per_rank):
            torch.testing.assert_close(
                results[name], expected, rtol=1e-10, atol=1e-12, msg=f"{name} on rank {rank}"
            )


def test_shard_helper():
    items = list(range(7))
    parts = [curvops.distributed.shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert curvops.distributed.shard([1], 1, 2) == []
    with pytest.raises(ValueError, match="rank 2 is not in"):
        curvops.distributed.shard(items, 2, 2)
