"""What torch's CPU thread count does to one curvature product: the measurement behind the
CLI's default ``--threads``.

One cached Hessian matvec and one 8-column GGN matmat per setting, on a small model (the
digits MLP of ``curvops demo``, P = 3,466) and a large one (784-512-256-10 MLP of
``benchmarks/problems.py``, P = 535,818); settings torch's default, 1 and 2 threads,
interleaved in rotating rounds (``timing.interleaved_medians``), median seconds.

    .venv/bin/python benchmarks/threads.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import curvops  # noqa: E402
from benchmarks import problems  # noqa: E402
from benchmarks.timing import interleaved_medians  # noqa: E402
from curvops.cli.digits import load_digits_data, make_mlp  # noqa: E402


def digits() -> problems.Problem:
    torch.manual_seed(0)
    data = load_digits_data()
    return problems.Problem("digits MLP", make_mlp(), torch.nn.CrossEntropyLoss(), data.train)


def products(problem: problems.Problem) -> dict[str, object]:
    """The two products of one problem, caches warm."""
    model, loss_fn, data = problem.model, problem.loss_fn, problem.data
    H = curvops.HessianOperator(model, loss_fn, data)
    G = curvops.GGNOperator(model, loss_fn, data)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(H.shape[0], generator=gen)
    M = torch.randn(H.shape[0], 8, generator=gen)
    return {
        "Hessian matvec": lambda: H.torch_matmat(v),
        "GGN 8-col matmat": lambda: G.torch_matmat(M),
    }


def measure(problem: problems.Problem, settings: dict[str, int], rounds: int) -> dict:
    """Median seconds per (product, setting)."""
    out = {}
    for name, product in products(problem).items():

        def at(n: int, product=product):
            torch.set_num_threads(n)
            return product()

        calls = {label: (lambda n=n: at(n)) for label, n in settings.items()}
        out[name] = interleaved_medians(calls, rounds, torch.device("cpu"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    default = torch.get_num_threads()
    settings = {f"default ({default})": default, "1": 1, "2": 2}
    print(f"torch {torch.__version__}, default threads {default}, {args.rounds} rounds")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| problem | P | product | " + " | ".join(settings) + " |")
    print("| --- | ---: | --- | " + " | ".join("---:" for _ in settings) + " |")
    for problem in (digits(), problems.mlp()):
        for name, times in measure(problem, settings, args.rounds).items():
            cells = " | ".join(f"{1e3 * times[s]:.1f} ms" for s in settings)
            print(f"| {problem.name} | {problem.num_params:,} | {name} | {cells} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    torch.set_num_threads(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
