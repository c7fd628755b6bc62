"""Layer spectra in lock-step against one eigensolve per block and eigsh(k=1) on the full operator.

python benchmarks/layer_spectra.py [--rounds 2] [--quick] [--json OUT]

A 12-layer tanh MLP 784-256x11-10 (P = 861,450; 12 layer blocks of 2,570-200,960
parameters) on 1,024 seeded random points in batches of 256, CE. Per curvature (Hessian,
GGN): a plain gradient (the floor), one product of the full operator and of the
block-diagonal one (blocks="layer"), ``eigsh(k=1, which="LM")`` on the full operator,
``block_top_eigenvalues`` in lock-step (the default) and with one solve per block
(``lockstep=False``), all at tol 1e-6, timed in interleaved rounds (median; each
eigen-solve on a fresh operator, built outside the timing). Accuracy: the largest
relative difference of the per-block λ_max and largest |λ| between the two ways.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import curvops  # noqa: E402
from benchmarks import floor  # noqa: E402
from benchmarks.output import rounds_main  # noqa: E402
from benchmarks.problems import Problem  # noqa: E402
from benchmarks.timing import interleaved_medians  # noqa: E402
from curvops.linalg.blocks import block_top_eigenvalues  # noqa: E402

OPS = {"hessian": curvops.HessianOperator, "ggn": curvops.GGNOperator}


def deep_mlp(quick: bool = False) -> Problem:
    """784-256x11-10 tanh MLP (12 Linear layers), 1,024 random points (512 with --quick)."""
    torch.manual_seed(0)
    widths = [784] + [256] * 11 + [10]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    gen = torch.Generator().manual_seed(1)
    n = 512 if quick else 1024
    X = torch.randn(n, 784, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    data = [(X[i : i + 256], y[i : i + 256]) for i in range(0, n, 256)]
    return Problem("mlp12", nn.Sequential(*layers[:-1]), nn.CrossEntropyLoss(), data)


def run(rounds: int, quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    problem = deep_mlp(quick)
    v = torch.randn(problem.num_params, generator=torch.Generator().manual_seed(0))
    return [row for curvature in OPS for row in one(curvature, problem, v, rounds)]


def one(curvature: str, problem: Problem, v: torch.Tensor, rounds: int) -> list[dict]:
    """The rows of one curvature: products, eigsh(k=1), both ways of the layer spectra."""
    cls, m, loss_fn, data = OPS[curvature], problem.model, problem.loss_fn, problem.data
    full, blocks = cls(m, loss_fn, data), cls(m, loss_fn, data, blocks="layer")
    results: dict = {}

    def solve(name, fn, **options):
        def call():
            results[name] = fn(cls(m, loss_fn, data, **options))  # a fresh operator

        return call

    calls = {
        "gradient": floor.gradient(problem),
        "product, full operator": lambda: full.torch_matmat(v),
        "product, block-diagonal": lambda: blocks.torch_matmat(v),
        "eigsh(k=1), full operator": solve("eigsh", lambda op: curvops.eigsh(op, k=1, which="LM")),
        "block_top_eigenvalues, lock-step": solve(
            "lockstep", block_top_eigenvalues, blocks="layer"
        ),
        "block_top_eigenvalues, one solve per block": solve(
            "sequential", lambda op: block_top_eigenvalues(op, lockstep=False), blocks="layer"
        ),
    }
    times = interleaved_medians(calls, rounds, torch.device("cpu"))
    together, apart = results["lockstep"], results["sequential"]
    diff = max(
        float(np.max(np.abs(a - b) / np.abs(b)))
        for a, b in (
            (together.eigenvalues, apart.eigenvalues),
            (together.largest_magnitude, apart.largest_magnitude),
        )
    )
    products = {
        "eigsh(k=1), full operator": results["eigsh"].n_matvecs,
        "block_top_eigenvalues, lock-step": together.n_matvecs,
        "block_top_eigenvalues, one solve per block": apart.n_matvecs,
    }
    return [
        {
            "curvature": curvature,
            "tool": name,
            "seconds": seconds,
            "x_grad": seconds / times["gradient"],
            "x_eigsh": seconds / times["eigsh(k=1), full operator"],
            "products": products.get(name),
            "lockstep_vs_sequential_rel_diff": diff if "block_top" in name else None,
        }
        for name, seconds in times.items()
    ]


def table(rows: list[dict]) -> str:
    lines = [
        "| curvature | what | seconds | x gradient | x eigsh(k=1) | products |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        products = "" if r["products"] is None else str(r["products"])
        lines.append(
            f"| {r['curvature']} | {r['tool']} | {r['seconds']:.3f} | {r['x_grad']:.2f} | "
            f"{r['x_eigsh']:.2f} | {products} |"
        )
    diffs = {
        r["curvature"]: r["lockstep_vs_sequential_rel_diff"] for r in rows if "lock" in r["tool"]
    }
    notes = [
        f"{c}: lock-step vs one solve per block, max rel. diff {d:.1e}" for c, d in diffs.items()
    ]
    return "\n".join(lines + [""] + notes)


def main() -> None:
    rounds_main(__doc__, run, table, rounds=2)


if __name__ == "__main__":
    main()
