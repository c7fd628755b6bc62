"""curvops benchmark: full-data Hessian / GGN products against the torch floor and the peers.

python benchmarks/run.py [--quick] [--check] [--json OUT] [--device cpu|cuda] [--threads 1]
                         [--no-eigen] [--no-kfac]

Three sections: the products (this file), top-10 eigenvalues (benchmarks/eigen.py) and
KFAC / EKFAC construction (benchmarks/kfac.py). Peers that are not installed are skipped
with a note. ``--check`` exits 1 when a curvops result in any section is WRONG (never for
speed).

Every ratio is taken within one run, from medians of interleaved rounds: "x grad" divides
by one full-data gradient (``loss.backward()`` over the same batches), "x peer" by the
fastest accurate peer's time per column. Each result is checked against a float64
reference; a result off by more than ``TOL`` is marked WRONG and never counts as fastest.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import eigen, floor, kfac  # noqa: E402
from benchmarks.output import save_rows  # noqa: E402
from benchmarks.problems import PROBLEMS, Problem  # noqa: E402
from benchmarks.timing import interleaved_medians  # noqa: E402
from benchmarks.tools import FLOOR, MATMAT_PEERS, add_before, build_all  # noqa: E402

TOL = 1e-3  # relative error of a float32 product against the float64 reference ...
FLOOR_FACTOR = 3.0  # ... or, if larger, this times the raw torch floor's own error
K = 16  # columns of the timed matmat (8 with --quick)
_FLOOR_NAMES = {name for table in FLOOR.values() for name in table}
REFERENCE = {"hessian": floor.double_backward_hvp, "ggn": floor.ggn_reference}


@dataclass
class Row:
    problem: str
    curvature: str
    tool: str
    k: int
    seconds: float = float("nan")
    x_grad: float = float("nan")
    per_column_x_grad: float = float("nan")
    x_peer: float = float("nan")
    rel_error: float = float("nan")
    ok: bool = True
    peer: bool = False
    peak_first_mib: float | None = None
    peak_later_mib: float | None = None
    held_mib: float | None = None


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="smaller data, 8 columns, no variants, no memory"
    )
    p.add_argument("--check", action="store_true", help="exit 1 if a curvops result is wrong")
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, help="timed rounds (default 3 quick, 7 full)")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--before", help="directory with an older hessian.py / ggn.py to compare")
    p.add_argument("--table", type=Path, help="print the table of a saved --json run and exit")
    p.add_argument("--eigen", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--kfac", action=argparse.BooleanOptionalAction, default=True)
    return p.parse_args(argv)


def bench_problem(name: str, args: argparse.Namespace, device: torch.device) -> list[Row]:
    problem = PROBLEMS[name](args.quick).to(str(device))
    print(f"\n== {name}: P = {problem.num_params:,}, N = {problem.num_data:,}", flush=True)
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(problem.num_params, 8 if args.quick else K, generator=gen).to(device)
    calls = {"gradient": floor.gradient(problem)}
    rows: dict[str, Row] = {}
    for curvature in REFERENCE:
        _add_curvature(curvature, problem, V, calls, rows, variants=not args.quick)
    rounds = args.rounds or (3 if args.quick else 7)
    medians = interleaved_medians(calls, rounds, device)
    for label, row in rows.items():
        row.seconds = medians[label]
    _judge(list(rows.values()))
    _ratios(list(rows.values()), medians["gradient"])
    print(f"  gradient: {medians['gradient'] * 1e3:.1f} ms", flush=True)
    return list(rows.values())


def _add_curvature(
    curvature: str, problem: Problem, V, calls: dict, rows: dict, variants: bool
) -> None:
    tools, peer_names = build_all(curvature, problem, variants)
    exact = REFERENCE[curvature](problem.to(str(V.device), torch.float64))
    refs = torch.stack([exact(V[:, j].double()) for j in range(2)], dim=1).detach()
    for tool, mv in tools.items():
        ks = (1, V.shape[1]) if tool.startswith("curvops") or tool in MATMAT_PEERS else (1,)
        for k in ks:
            M = V[:, 0] if k == 1 else V
            label = f"{curvature}/{tool}/{k}"
            row = Row(problem.name, curvature, tool, k, peer=tool in peer_names)
            try:
                row.rel_error = _rel_error(mv(M), refs)
            except Exception as err:  # a peer that fails on this model is noted, not fatal
                if not row.peer:
                    raise
                print(f"  note: {tool} failed on {problem.name}: {type(err).__name__}: {err}")
                continue
            calls[label] = functools.partial(mv, M)
            rows[label] = row


def _rel_error(out: torch.Tensor, refs: torch.Tensor) -> float:
    out = out.detach().double().reshape(refs.shape[0], -1)[:, : refs.shape[1]]
    ref = refs[:, : out.shape[1]]
    err = float((out - ref).norm() / ref.norm())
    return err if err == err else float("inf")  # NaN counts as wrong


def _judge(rows: list[Row]) -> None:
    """Mark each result ok or WRONG: within TOL, or within FLOOR_FACTOR x the error of the
    hand-written torch product in the same precision (a ReLU net's float32 Hessian can
    differ from the float64 one by more than TOL: a few units switch at their kinks)."""
    floors = {r.curvature: r.rel_error for r in rows if r.tool in _FLOOR_NAMES and r.k == 1}
    for row in rows:
        row.ok = row.rel_error <= max(TOL, FLOOR_FACTOR * floors.get(row.curvature, 0.0))


def _ratios(rows: list[Row], grad_seconds: float) -> None:
    for row in rows:
        row.x_grad = row.seconds / grad_seconds
        row.per_column_x_grad = row.x_grad / row.k
    for curvature in {r.curvature for r in rows}:
        peers = [r for r in rows if r.curvature == curvature and r.peer and r.ok]
        if not peers:
            continue
        best = min(r.per_column_x_grad for r in peers if r.k == 1)
        best_any = min(r.per_column_x_grad for r in peers)
        for row in rows:
            if row.curvature == curvature:
                row.x_peer = row.per_column_x_grad / (best if row.k == 1 else best_any)


def measure_memory(rows: list[Row], args: argparse.Namespace) -> None:
    """Each row's peak extra memory, in a fresh process per tool (see benchmarks/memory.py)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    for row in rows:
        cmd = [sys.executable, "-m", "benchmarks.memory", "--problem", row.problem]
        cmd += ["--curvature", row.curvature, "--tool", row.tool, "--k", str(row.k)]
        cmd += ["--device", args.device, "--threads", str(args.threads)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--before", args.before] if args.before else []
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode or not lines:
            print(f"  note: memory probe failed for {row.tool}: {done.stderr[-300:]}")
            continue
        result = json.loads(lines[-1])
        row.peak_first_mib, row.peak_later_mib = result["first"], result["later"]
        row.held_mib = result["held"]


def print_table(rows: list[Row]) -> None:
    head = "| problem | curvature | tool | k | median ms | x grad | per column x grad | x best peer | rel. error | peak extra MiB (first product) | held MiB |"
    print("\n" + head + "\n|" + " --- |" * 11)
    for r in rows:
        err = f"{r.rel_error:.1e}" + ("" if r.ok else " WRONG")
        mem = "" if r.held_mib is None else f"{r.peak_first_mib:.0f}"
        held = "" if r.held_mib is None else f"{r.held_mib:.0f}"
        print(
            f"| {r.problem} | {r.curvature} | {r.tool} | {r.k} | {r.seconds * 1e3:.1f} | "
            f"{r.x_grad:.2f} | {r.per_column_x_grad:.3f} | {r.x_peer:.2f} | {err} | {mem} | {held} |"
        )


def print_saved(path: Path) -> int:
    """Re-judge and re-print a saved run (the gradient time is recovered from x_grad)."""
    rows = [Row(**r) for r in json.loads(path.read_text())]
    for problem in dict.fromkeys(r.problem for r in rows):
        group = [r for r in rows if r.problem == problem]
        _judge(group)
        _ratios(group, group[0].seconds / group[0].x_grad)
    print_table(rows)
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        return print_saved(args.table)
    if args.before:
        add_before(args.before)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s)")
    rows = [row for name in args.problems for row in bench_problem(name, args, device)]
    if args.memory if args.memory is not None else not args.quick:
        measure_memory(rows, args)
    print_table(rows)
    save_rows(args.json, rows)
    wrong = [r for r in rows if not r.ok and not r.peer]
    for r in wrong:
        print(f"WRONG: {r.problem} {r.curvature} {r.tool} k={r.k}: rel. error {r.rel_error:.1e}")
    wrong += _sections(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 1 if args.check and wrong else 0


def _sections(args: argparse.Namespace) -> list:
    """The eigen and KFAC sections (their own problems, quick or full); curvops's WRONG rows."""
    wrong = []
    for name, module in (("eigen", eigen), ("kfac", kfac)):
        if not getattr(args, name):
            continue
        sub = argparse.Namespace(quick=args.quick, device=args.device, problems=None)
        sub.rounds, sub.kfac_problems, sub.memory = None, None, None
        rows = module.run(sub)
        module.print_table(rows)
        save_rows(args.json and args.json.with_name(f"{args.json.stem}_{name}.json"), rows)
        wrong += module.wrong(rows)
    return wrong


if __name__ == "__main__":
    sys.exit(main())
