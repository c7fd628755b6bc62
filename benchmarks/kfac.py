"""KFAC / EKFAC construction: time, peak memory, product time and accuracy, curvops vs peers.

python benchmarks/kfac.py [--quick] [--check] [--json OUT] [--rounds R] [--memory]

Per problem and kind (KFAC, EKFAC; type-2, "expand", each tool's default weight / bias
blocks): the construction time up to and including the first product (median of
interleaved rounds, each on a fresh copy of the model), its peak extra memory (a fresh
process per tool, benchmarks/memory.py's RSS proxy), the time of a later product against
the exact GGN product (curvops GGNOperator, same run), the relative difference of the
products from a hand-written KFAC / EKFAC (benchmarks/kfac_floor.py; above ``WRONG_AT``:
WRONG), and on the small dense problem the relative Frobenius error against the
block-diagonal GGN (one block per layer, float64).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import curvops  # noqa: E402
from benchmarks.kfac_floor import FloorKFAC  # noqa: E402
from benchmarks.kfac_tools import TOOLS, Built, exact_ggn  # noqa: E402
from benchmarks.output import finish  # noqa: E402
from benchmarks.peers import available  # noqa: E402
from benchmarks.problems import PROBLEMS, Problem, digits_small  # noqa: E402
from benchmarks.timing import PeakRss, interleaved_medians, rss_mib  # noqa: E402

WRONG_AT = 1e-4  # relative difference of a float32 product from the float64 floor
FULL, QUICK = ("digits_small", "mlp", "cnn"), ("digits_small",)
DENSE = "digits_small"  # small enough for the dense block-diagonal GGN


@dataclass
class KfacRow:
    problem: str
    kind: str
    tool: str
    construct_s: float = float("nan")
    x_best_peer: float = float("nan")
    product_ms: float = float("nan")
    x_exact_ggn: float = float("nan")
    floor_diff: float = float("nan")
    frobenius_error: float | None = None
    ok: bool = True
    peer: bool = False
    peak_mib: float | None = None
    held_mib: float | None = None


def load(name: str, quick: bool, device: str = "cpu") -> Problem:
    return (digits_small() if name == DENSE else PROBLEMS[name](quick)).to(device)


def installed(kind: str) -> dict:
    out = {}
    for tool, (module, build) in TOOLS[kind].items():
        if available(module):
            out[tool] = build
        else:
            print(f"  note: {kind} {tool} skipped: {module} is not installed")
    return out


# ---------------------------------------------------------------- measurements
def construct(builders: dict, problem: Problem, v: torch.Tensor, rounds: int) -> dict:
    """{tool: (median seconds of build + first product, the last Built)}, interleaved;
    a tool that fails is noted and left out."""
    names, times, built = list(builders), {n: [] for n in builders}, {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name in built and built[name] is None:
                continue
            copy = problem.copy()  # hooks stay on the copy
            try:
                start = time.perf_counter()
                b = builders[name](copy)
                b.matmat(v)
                times[name].append(time.perf_counter() - start)
                built[name] = b
            except Exception as err:  # a peer that cannot build this model is noted
                print(f"  note: {name} failed on {problem.name}: {type(err).__name__}: {err}")
                built[name] = None
    return {n: (statistics.median(times[n]), built[n]) for n in names if built.get(n)}


def floor_diff(built: Built, floors: dict, V: torch.Tensor) -> float:
    out = built.matmat(V).double()
    ref = torch.stack([floors[built.joint].matvec(V[:, j]) for j in range(V.shape[1])], 1)
    err = float((out - ref).norm() / ref.norm())
    return err if err == err else float("inf")


def layer_blocks(matmat, slices: list[slice], P: int, dtype) -> list[torch.Tensor]:
    """The diagonal blocks (one per layer) of an operator, from products with unit columns."""
    blocks = []
    for s in slices:
        E = torch.zeros(P, s.stop - s.start, dtype=dtype)
        E[s] = torch.eye(s.stop - s.start, dtype=dtype)
        blocks.append(matmat(E)[s].double())
    return blocks


def frobenius_error(built: Built, ref: list[torch.Tensor], slices, P: int) -> float:
    blocks = layer_blocks(built.matmat, slices, P, torch.float32)
    num = sum(float((K - G).square().sum()) for K, G in zip(blocks, ref))
    err = (num / sum(float(G.square().sum()) for G in ref)) ** 0.5
    return err if err == err else float("inf")


def dense_reference(problem: Problem) -> tuple[list[torch.Tensor], list[slice]]:
    """The exact GGN's per-layer diagonal blocks in float64, and their slices."""
    p64 = problem.to("cpu", torch.float64)
    op = curvops.GGNOperator(p64.model, p64.loss_fn, p64.data, blocks="layer")
    slices = list(op.block_slices)
    return layer_blocks(op.torch_matmat, slices, problem.num_params, torch.float64), slices


def probe_memory(kind: str, tool: str, problem: str, quick: bool) -> tuple[float, float] | None:
    """(peak, held) MiB of one construction, in a fresh process (see ``--probe``)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    cmd = [sys.executable, "-m", "benchmarks.kfac", "--probe", kind, tool, problem]
    done = subprocess.run(
        cmd + (["--quick"] if quick else []), cwd=ROOT, env=env, capture_output=True, text=True
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        print(f"  note: memory probe failed for {kind} {tool}: {done.stderr[-300:]}")
        return None
    result = json.loads(lines[-1])
    return result["peak"], result["held"]


def _probe(kind: str, tool: str, name: str, quick: bool) -> None:
    # torch imports sympy (~40 MiB resident) on the first autograd.grad with grad_outputs;
    # import it before measuring, so that no tool is charged for it
    import torch.fx.experimental.symbolic_shapes  # noqa: F401

    torch.set_num_threads(1)
    problem = load(name, quick)
    v = torch.randn(problem.num_params, 1, generator=torch.Generator().manual_seed(0))
    build = TOOLS[kind][tool][1]
    before = rss_mib()
    with PeakRss() as probe:
        built = build(problem)
        built.matmat(v)
    print(json.dumps({"peak": round(probe.peak, 1), "held": round(rss_mib() - before, 1)}))


# ---------------------------------------------------------------- one problem
def bench_problem(name: str, args: argparse.Namespace) -> list[KfacRow]:
    problem = load(name, args.quick, args.device)
    print(f"\n== kfac {name}: P = {problem.num_params:,}, N = {problem.num_data:,}", flush=True)
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(problem.num_params, 2, generator=gen).to(args.device)
    rounds = args.rounds or (1 if args.quick else 3)
    dense = dense_reference(problem) if name == DENSE else None
    rows = []
    for kind in TOOLS:
        rows += bench_kind(kind, problem, V, rounds, dense, args)
    return rows


def bench_kind(kind, problem, V, rounds, dense, args) -> list[KfacRow]:
    builders = installed(kind)
    built = construct(builders, problem, V[:, :1], rounds)
    floors = {j: FloorKFAC(problem, joint=j, ekfac=kind == "ekfac") for j in (False, True)}
    calls = {t: functools.partial(b.matmat, V[:, :1]) for t, (_, b) in built.items()}
    calls["exact GGN"] = functools.partial(exact_ggn(problem.copy()), V[:, :1])
    products = interleaved_medians(calls, 5 if args.quick else 9, V.device)
    rows = []
    for tool, (seconds, b) in built.items():
        row = KfacRow(problem.name, kind, tool, seconds, peer=not tool.startswith("curvops"))
        row.product_ms = products[tool] * 1e3
        row.x_exact_ggn = products[tool] / products["exact GGN"]
        row.floor_diff = floor_diff(b, floors, V)
        row.ok = row.floor_diff <= WRONG_AT
        if dense is not None:
            row.frobenius_error = frobenius_error(b, *dense, problem.num_params)
        if args.memory:
            memory = probe_memory(kind, tool, problem.name, args.quick)
            row.peak_mib, row.held_mib = memory if memory else (None, None)
        rows.append(row)
    _ratios(rows)
    return rows


def _ratios(rows: list[KfacRow]) -> None:
    peers = [r.construct_s for r in rows if r.peer and r.ok]
    for row in rows:
        row.x_best_peer = row.construct_s / min(peers) if peers else float("nan")


# ---------------------------------------------------------------- report
def print_table(rows: list[KfacRow]) -> None:
    print(
        "\n| problem | kind | tool | construction s | x best peer | product ms | x exact GGN "
        "product | rel. diff vs hand-written | rel. Frobenius error vs block GGN | peak MiB "
        "| held MiB |\n|" + " --- |" * 11
    )
    for r in rows:
        diff = f"{r.floor_diff:.1e}" + ("" if r.ok else " WRONG")
        frob = "" if r.frobenius_error is None else f"{r.frobenius_error:.3f}"
        peak = "" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        held = "" if r.held_mib is None else f"{r.held_mib:.0f}"
        print(
            f"| {r.problem} | {r.kind} | {r.tool} | {r.construct_s:.3f} | {r.x_best_peer:.2f} | "
            f"{r.product_ms:.2f} | {r.x_exact_ggn:.3f} | {diff} | {frob} | {peak} | {held} |"
        )


def wrong(rows: list[KfacRow]) -> list[KfacRow]:
    bad = [r for r in rows if not r.ok and not r.peer]
    for r in bad:
        print(f"WRONG: {r.kind} {r.problem} {r.tool}: rel. diff {r.floor_diff:.1e}")
    return bad


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the small dense problem, 1 round")
    p.add_argument("--check", action="store_true", help="exit 1 if a curvops result is wrong")
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    p.add_argument("--table", type=Path, help="print the table of a saved --json run and exit")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, help="construction rounds (default 1 quick, 3 full)")
    p.add_argument("--problems", nargs="+", choices=list(FULL))
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--probe", nargs=3, metavar=("KIND", "TOOL", "PROBLEM"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[KfacRow]:
    """The KFAC / EKFAC section (also called by run.py)."""
    if getattr(args, "memory", None) is None:
        args.memory = not args.quick
    names = getattr(args, "kfac_problems", None) or (QUICK if args.quick else FULL)
    return [row for name in names for row in bench_problem(name, args)]


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        print_table([KfacRow(**r) for r in json.loads(args.table.read_text())])
        return 0
    if args.probe:
        _probe(*args.probe, args.quick)
        return 0
    torch.set_num_threads(args.threads)
    args.kfac_problems = args.problems
    start = time.perf_counter()
    return finish(run(args), args, print_table, wrong, start)


if __name__ == "__main__":
    sys.exit(main())
