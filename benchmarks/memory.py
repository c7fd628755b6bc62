"""Peak extra memory of one tool's first product, in a fresh process (called by run.py).

python -m benchmarks.memory --problem mlp --curvature hessian --tool curvops --k 1
prints one JSON line, MiB: {"first": peak extra of the first product, "later": of the
second, "held": memory held between them (e.g. a graph cache)}.
"""

from __future__ import annotations

import argparse
import gc
import json

import torch

from benchmarks.problems import PROBLEMS
from benchmarks.timing import held_mib, peak_extra_mib
from benchmarks.tools import add_before, build_one


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--problem", required=True)
    p.add_argument("--curvature", required=True)
    p.add_argument("--tool", required=True)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--before")
    args = p.parse_args()
    if args.before:
        add_before(args.before)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    problem = PROBLEMS[args.problem](args.quick).to(device)
    mv = build_one(args.curvature, args.tool, problem)
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(problem.num_params, args.k, generator=gen).to(device)
    V = V[:, 0] if args.k == 1 else V
    gc.collect()
    before = held_mib(device)
    first = peak_extra_mib(lambda: mv(V), device)
    gc.collect()
    held = held_mib(device) - before
    later = peak_extra_mib(lambda: mv(V), device)
    print(json.dumps({"first": round(first, 1), "later": round(later, 1), "held": round(held, 1)}))


if __name__ == "__main__":
    main()
