"""What the change watcher costs: one ``ModelWatch.token()`` against one cached Hessian product.

Every product of every operator computes the model's token once (staleness and the graph
cache both compare it), so its share of a product is the overhead of "caches follow
everything the function depends on". Also times the column plan's fixed rule against the
other split on one matmat (the measurement behind ``BATCHED_MAX_PARAMS``).

    .venv/bin/python benchmarks/watch.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import curvops  # noqa: E402
from benchmarks import problems  # noqa: E402
from benchmarks.timing import interleaved_medians  # noqa: E402
from curvops.core.watch import ModelWatch  # noqa: E402


def measure(problem: problems.Problem, rounds: int) -> dict[str, float]:
    model, loss_fn, data = problem.model, problem.loss_fn, problem.data
    H = curvops.HessianOperator(model, loss_fn, data)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0))
    H.torch_matmat(v)  # fills the graph cache
    watch = ModelWatch(model)
    device = next(model.parameters()).device
    times = interleaved_medians(
        {"token": watch.token, "product": lambda: H.torch_matmat(v)}, rounds, device
    )
    out = {"P": H.shape[0], "token_ms": 1e3 * times["token"], "product_ms": 1e3 * times["product"]}
    out["share"] = times["token"] / times["product"]
    M = torch.randn(H.shape[0], 8, generator=torch.Generator().manual_seed(1))
    ops = {
        mode: curvops.HessianOperator(model, loss_fn, data, column_mode=mode)
        for mode in ("per_column", "batched")
    }
    for op in ops.values():
        op.torch_matmat(M)  # cache filled, warm
    mm = interleaved_medians(
        {m: (lambda op=op: op.torch_matmat(M)) for m, op in ops.items()}, rounds, device
    )
    out["batched_over_per_column"] = mm["batched"] / mm["per_column"]
    out["rule_batches"] = bool(curvops.HessianOperator(model, loss_fn, data)._plan.batched)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ["digits_small", "digits", "transformer", "cnn", "mlp"]
    print("problem        P         token ms  product ms  share   8-col batched/per-column  rule")
    for name in names:
        r = measure(getattr(problems, name)(quick=args.quick), 3 if args.quick else args.rounds)
        print(
            f"{name:<13} {r['P']:>9,} {r['token_ms']:>9.3f} {r['product_ms']:>10.2f} "
            f"{100 * r['share']:>5.2f} %  {r['batched_over_per_column']:>10.2f}"
            f"               {'batched' if r['rule_batches'] else 'per column'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
