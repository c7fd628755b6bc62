"""Products on a DataLoader against the same products on a list (and curvlinops on the loader).

python benchmarks/dataloader.py [--rounds 7] [--quick] [--json OUT]

The 784-512-256-10 ReLU MLP of ``problems.mlp`` (N = 2,048, batches of 512, CE): Hessian and
GGN matvecs on the list of batches, on ``DataLoader(TensorDataset(X, y), batch_size=512)``
(no shuffling, and shuffle=True), with the cache off (``graph_cache_mib=0``: what a
DataLoader got before, when the cache turned itself off), and curvlinops on the same
loader. Medians of interleaved rounds; ratios against a plain gradient over the list
(the floor), against the list product and against curvlinops. Every product is checked
against the list product (relative error).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import curvops  # noqa: E402
from benchmarks import floor, peers  # noqa: E402
from benchmarks.output import rounds_main  # noqa: E402
from benchmarks.problems import mlp  # noqa: E402
from benchmarks.timing import interleaved_medians  # noqa: E402

OPS = {"hessian": curvops.HessianOperator, "ggn": curvops.GGNOperator}


def loaders(problem) -> dict[str, DataLoader]:
    X = torch.cat([x for x, _ in problem.data])
    y = torch.cat([t for _, t in problem.data])
    size = len(problem.data[0][1])
    gen = torch.Generator().manual_seed(0)
    return {
        "loader": DataLoader(TensorDataset(X, y), batch_size=size),
        "shuffled": DataLoader(TensorDataset(X, y), batch_size=size, shuffle=True, generator=gen),
    }


def tools(problem, curvature: str) -> dict:
    """name -> matvec on the list, the loaders, cache off, and curvlinops on the loader."""
    cls, data = OPS[curvature], loaders(problem)
    model, loss_fn = problem.model, problem.loss_fn
    out = {
        "curvops list": cls(model, loss_fn, problem.data).torch_matmat,
        "curvops loader": cls(model, loss_fn, data["loader"]).torch_matmat,
        "curvops loader shuffled": cls(model, loss_fn, data["shuffled"]).torch_matmat,
        "curvops loader, cache off": cls(
            model, loss_fn, data["loader"], graph_cache_mib=0
        ).torch_matmat,
    }
    if peers.available("curvlinops"):
        build = peers.curvlinops_hessian if curvature == "hessian" else peers.curvlinops_ggn
        loader_problem = problem.copy()
        loader_problem.data = data["loader"]
        out["curvlinops loader"] = build(loader_problem)
    else:
        print("  note: curvlinops is not installed; skipped")
    return out


def run(rounds: int, quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    problem = mlp(quick)
    v = torch.randn(problem.num_params, generator=torch.Generator().manual_seed(0))
    rows = []
    for curvature in OPS:
        mvs = tools(problem, curvature)
        calls = {"gradient (list)": floor.gradient(problem)}
        calls.update({name: (lambda mv=mv: mv(v)) for name, mv in mvs.items()})
        times = interleaved_medians(calls, rounds, torch.device("cpu"))
        ref = mvs["curvops list"](v)
        for name, seconds in times.items():
            row = {"curvature": curvature, "tool": name, "ms": 1e3 * seconds}
            row["x_grad"] = seconds / times["gradient (list)"]
            if name in mvs:
                row["x_list"] = seconds / times["curvops list"]
                if "curvlinops loader" in times:
                    row["x_curvlinops"] = seconds / times["curvlinops loader"]
                row["rel_error"] = float((mvs[name](v) - ref).norm() / ref.norm())
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = "| curvature | tool | median ms | x gradient | x list | x curvlinops (loader) | rel. diff vs list |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cells = [f"{r['ms']:.1f}", f"{r['x_grad']:.2f}"]
        cells += [f"{r[k]:.2f}" if k in r else "" for k in ("x_list", "x_curvlinops")]
        cells.append(f"{r['rel_error']:.1e}" if "rel_error" in r else "")
        lines.append(f"| {r['curvature']} | {r['tool']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    rounds_main(__doc__, run, table, rounds=7)


if __name__ == "__main__":
    main()
