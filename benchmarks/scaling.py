"""How the cost of a Hessian product and of top-k eigsh grows with N, P and k.

python benchmarks/scaling.py [--quick] [--out DIR] [--backend lanczos]

A tanh MLP 64-h-h-10 on random data, cross-entropy, batches of 256. Three sweeps, each
varying one quantity from a base point (N = 1,024, h = 128, k = 10):
  N: the number of data points;   P: the parameter count, through the width h;
  k: the number of eigenpairs (the product row then shows a matmat with k columns).
Per point: the fastest of 5 products (after a warm-up) and the faster of 2 runs of
curvops.eigsh(k, which="LA", tol=1e-4) from a fresh operator, with its product count. The
fastest, not the median: on a shared machine the minimum is the steadiest estimate of the
cost itself. Prints the table and writes
scaling.png (and scaling.json) to DIR (default benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import curvops  # noqa: E402

BASE = {"N": 1024, "h": 128, "k": 10}
SWEEPS = {
    "N": [256, 512, 1024, 2048, 4096, 8192],
    "h": [32, 64, 128, 256, 512],
    "k": [1, 2, 5, 10, 20, 40],
}
QUICK_SWEEPS = {"N": [256, 1024, 4096], "h": [32, 128, 512], "k": [1, 10, 40]}
LABELS = {"N": "data points N", "h": "parameters P", "k": "eigenpairs k"}


@dataclass
class Point:
    sweep: str
    N: int
    P: int
    k: int
    product_ms: float
    eigsh_s: float
    n_matvecs: int
    converged: bool


def make_problem(N: int, h: int):
    """A seeded 64-h-h-10 tanh MLP, random inputs and labels in batches of 256."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 10))
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(N, 64, generator=gen)
    y = torch.randint(0, 10, (N,), generator=gen)
    data = [(X[i : i + 256], y[i : i + 256]) for i in range(0, N, 256)]
    return model, nn.CrossEntropyLoss(), data


def measure(sweep: str, N: int, h: int, k: int, backend: str) -> Point:
    model, loss_fn, data = make_problem(N, h)
    op = curvops.HessianOperator(model, loss_fn, data)
    P = op.shape[0]
    M = torch.randn(P, k if sweep == "k" else 1, generator=torch.Generator().manual_seed(2))
    op.torch_matmat(M)  # warm-up (builds the graph cache)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        op.torch_matmat(M)
        times.append(time.perf_counter() - start)
    runs = []
    for _ in range(2):  # from a fresh operator each time
        op = curvops.HessianOperator(model, loss_fn, data)
        runs.append(curvops.eigsh(op, k=k, which="LA", tol=1e-4, backend=backend))
    res = min(runs, key=lambda r: r.seconds)
    point = Point(sweep, N, P, k, min(times) * 1e3, res.seconds, res.n_matvecs,
                  res.all_converged)  # fmt: skip
    print(
        f"  {sweep}: N={N:>5} P={P:>7,} k={k:>2}  product {point.product_ms:8.1f} ms  "
        f"eigsh {point.eigsh_s:7.2f} s  {res.n_matvecs:>4} products",
        flush=True,
    )
    return point


def run(sweeps: dict, backend: str) -> list[Point]:
    points = []
    for sweep, values in sweeps.items():
        for value in values:
            cfg = dict(BASE, **{sweep: value})
            points.append(measure(sweep, cfg["N"], cfg["h"], cfg["k"], backend))
    return points


def plot(points: list[Point], path: Path, backend: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    for col, sweep in enumerate(SWEEPS):
        pts = [p for p in points if p.sweep == sweep]
        x = [getattr(p, "P" if sweep == "h" else sweep) for p in pts]
        _panel(axes[0, col], x, [p.product_ms for p in pts], "ms", sweep)
        _panel(axes[1, col], x, [p.eigsh_s for p in pts], "s", sweep)
        for p, xi in zip(pts, x):
            axes[1, col].annotate(
                f"{p.n_matvecs}", (xi, p.eigsh_s), textcoords="offset points", xytext=(0, 6),
                ha="center", fontsize=8, color="0.3",
            )  # fmt: skip
        axes[1, col].set_xlabel(LABELS[sweep])
    axes[0, 0].set_ylabel("Hessian product (ms)")
    axes[0, 2].set_title("matmat with k columns")
    axes[1, 0].set_ylabel(f"top-k eigsh, tol 1e-4 (s)\nlabels: products used ({backend})")
    axes[1, 2].set_title("top-k eigenpairs")
    for col, fixed in enumerate(("P", "N")):
        axes[0, col].set_title(f"one matvec, {fixed} fixed")
        axes[1, col].set_title(f"top-10 eigenpairs, {fixed} fixed")
    fig.suptitle(
        "curvops HessianOperator on a 64-h-h-10 tanh MLP (base: N = 1,024, h = 128, k = 10; "
        "1 CPU thread, shared machine: fastest of repeats; dashed: proportional growth)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(ax, x, y, unit: str, sweep: str) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    ax.loglog(x, y, "o-", color="C0" if unit == "ms" else "C1")
    ax.loglog(x, [y[0] * xi / x[0] for xi in x], "--", color="0.6", lw=1)  # ∝ x from the first
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{v:,}" for v in x], rotation=30, fontsize=8)
    ax.minorticks_off()
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))


def print_table(points: list[Point]) -> None:
    print("\n| sweep | N | P | k | product ms | eigsh s | products | converged |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in points:
        print(
            f"| {p.sweep} | {p.N} | {p.P} | {p.k} | {p.product_ms:.1f} | {p.eigsh_s:.2f} | "
            f"{p.n_matvecs} | {p.converged} |"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 points per sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--backend", default="lanczos", choices=["arpack", "lanczos", "lobpcg"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    points = run(QUICK_SWEEPS if args.quick else SWEEPS, args.backend)
    print_table(points)
    (args.out / "scaling.json").write_text(json.dumps([asdict(p) for p in points], indent=1))
    plot(points, args.out / "scaling.png", args.backend)
    print(f"\nwrote {args.out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
