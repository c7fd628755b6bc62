"""Top-k Hessian spectrum of a digits MLP with the data sharded over several processes.

    torchrun --standalone --nproc_per_node 2 examples/distributed_spectrum.py         # CPU, gloo
    torchrun --standalone --nproc_per_node 2 examples/distributed_spectrum.py --cuda  # GPUs, nccl
    torchrun --standalone --nproc_per_node 2 examples/distributed_spectrum.py --time  # + timing

Every rank builds the same model (same seed, same training), keeps its own share of the
batches, and passes ``process_group=dist.group.WORLD``. Each product sums the ranks' parts
with one all_reduce; eigsh, the trace estimate and KFAC then agree on every rank.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn

import curvops
from curvops.cli.digits import load_digits_data, make_mlp, train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=5, help="number of top eigenvalues")
    p.add_argument("--cuda", action="store_true", help="one GPU per rank, nccl backend")
    p.add_argument("--time", action="store_true", help="time a 16-column matmat")
    p.add_argument("--epochs", type=int, default=20, help="training epochs before the analysis")
    return p.parse_args()


def setup(cuda: bool) -> torch.device:
    """Join the process group torchrun describes; one GPU per local rank with --cuda."""
    dist.init_process_group("nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def say(*args) -> None:
    if dist.get_rank() == 0:
        print(*args, flush=True)


def time_matmat(op, columns: int = 16, repeats: int = 9) -> float:
    """Median seconds of one ``columns``-column product (every rank takes part)."""
    M = torch.randn(op.shape[0], columns, generator=torch.Generator().manual_seed(0))
    M = M.to(device=op.device, dtype=op.torch_dtype)
    op.torch_matmat(M)  # warm-up: builds the cached graphs
    seconds = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        op.torch_matmat(M)
        if op.device.type == "cuda":
            torch.cuda.synchronize(op.device)
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def main() -> None:
    args = parse_args()
    device = setup(args.cuda)
    torch.manual_seed(0)
    data = load_digits_data(device=device, batch_size=128)
    model = make_mlp().to(device)
    train(model, data, epochs=args.epochs)  # identical on every rank: same seed, same data
    mine = curvops.distributed.shard(data.train)  # this rank's contiguous batches
    group = dist.group.WORLD
    loss_fn = nn.CrossEntropyLoss()
    H = curvops.HessianOperator(model, loss_fn, mine, process_group=group)
    say(f"{dist.get_world_size()} ranks, P = {H.shape[0]:,}, N = {H.num_data} (global)")
    top = curvops.eigsh(H, k=args.k, which="LA", tol=1e-6)
    say("Hessian top eigenvalues:", " ".join(f"{v:.5g}" for v in top.eigenvalues))
    trace = curvops.hutchinson_trace(H, n_probes=32)
    say(f"Hessian trace ≈ {trace.estimate:.4g} ± {trace.std_error:.2g}")
    kfac = curvops.KFACOperator(model, loss_fn, mine, process_group=group)
    say(f"KFAC trace = {kfac.trace():.4g}")
    if args.time:
        seconds = time_matmat(H)
        say(f"16-column Hessian matmat: {seconds * 1e3:.1f} ms on {dist.get_world_size()} ranks")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
