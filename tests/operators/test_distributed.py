"""Two gloo processes on CPU: every operator and algorithm, sharded, equals one process.

Each rank holds a shard of the batches (unequal sizes, or all on rank 0 and none on rank 1);
the ranks must agree bitwise with each other and, to 1e-10 in float64, with a single process
that holds all the data.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_worker import SIZES, results, run
from models import make_problem

import curvops

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

SHARDS = {"3+1": ((0, 1, 2), (3,)), "4+empty": ((0, 1, 2, 3), ())}
# Results of iterative algorithms: equal up to their own tolerance, not to round-off.
ITERATIVE = {"power": 1e-8, "density": 1e-8}


def _spawn(tmp_path, shards):
    mp.spawn(run, args=(2, str(tmp_path / "init"), str(tmp_path), shards), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def single_process():
    model, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=SIZES)
    data = [(X.double(), y) for X, y in data]
    return results(model.double(), loss_fn, data)


@pytest.mark.parametrize("shards", SHARDS.values(), ids=SHARDS.keys())
def test_sharded_equals_single_process(tmp_path, shards, single_process):
    per_rank = _spawn(tmp_path, shards)
    assert per_rank[0].keys() == single_process.keys()
    for name, expected in single_process.items():
        torch.testing.assert_close(
            per_rank[1][name], per_rank[0][name], rtol=0, atol=0, msg=f"{name}: ranks differ"
        )
        if name.endswith("_vectors"):  # signs are arbitrary: compare |cosines|
            cosines = (per_rank[0][name] * expected).sum(0).abs()
            torch.testing.assert_close(cosines, torch.ones_like(cosines), rtol=0, atol=1e-8)
            continue
        tol = ITERATIVE.get(name, 1e-10)
        torch.testing.assert_close(
            per_rank[0][name], expected, rtol=tol, atol=tol * 1e-2, msg=f"{name}: sharded"
        )


def test_shard_helper():
    items = list(range(7))
    parts = [curvops.distributed.shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert curvops.distributed.shard([1], 1, 2) == []
    with pytest.raises(ValueError, match="rank 2 is not in"):
        curvops.distributed.shard(items, 2, 2)


def test_all_reduce_many_without_group_is_identity():
    ts = [torch.ones(2), torch.zeros(3, 1)]
    out = curvops.distributed.all_reduce_sum_many(ts, None)
    assert all(a is b for a, b in zip(out, ts))


def _count_collectives(rank, world_size, init_file, out_dir):
    """One matmat = one all_reduce of P x k numbers, whatever the number of batches."""
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        model, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=SIZES)
        ops = [
            curvops.HessianOperator(model, loss_fn, data, process_group=dist.group.WORLD),
            curvops.GGNOperator(model, loss_fn, data, process_group=dist.group.WORLD),
        ]
        calls = []
        original = dist.all_reduce

        def counting(t, *args, **kw):
            calls.append(t.numel())
            return original(t, *args, **kw)

        dist.all_reduce = counting
        try:
            for op in ops:
                op.torch_matmat(torch.randn(op.shape[0], 5))
        finally:
            dist.all_reduce = original
        torch.save(torch.tensor(calls), f"{out_dir}/calls{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_one_all_reduce_per_matmat(tmp_path):
    mp.spawn(_count_collectives, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    model, _, _ = make_problem("mlp_tanh", "ce", sizes=SIZES)
    P = sum(p.numel() for p in model.parameters())
    for rank in range(2):
        calls = torch.load(tmp_path / f"calls{rank}.pt", weights_only=True).tolist()
        assert calls == [P * 5, P * 5], calls


def test_example_runs_under_torchrun():
    """examples/distributed_spectrum.py on 2 gloo ranks agrees with 1 rank on all data."""
    script = Path(__file__).parents[2] / "examples" / "distributed_spectrum.py"
    outputs = []
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", str(n), str(script), "--k", "3", "--epochs", "1"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"{n} ranks, P = 3,466, N = 1400 (global)" in done.stdout
        outputs.append([line for line in done.stdout.splitlines() if "ranks" not in line])
    assert outputs[0] == outputs[1]  # eigenvalues, trace, KFAC trace: printed identically
