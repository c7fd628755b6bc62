"""Top-k Hessian eigenvalues: wall time, products and accuracy, curvops against the peers.

python benchmarks/eigen.py [--quick] [--check] [--json OUT] [--problems ...] [--rounds R]

Every tool builds its own Hessian operator of the whole data set and asks for the k = 10
largest eigenvalues (``which="LA"``) at tolerance 1e-4: curvops.eigsh with each backend,
scipy's eigsh on curvlinops' HessianLinearOperator, hessian-eigenthings' Lanczos and
deflated power iteration, PyHessian's power iteration (the last three at their default
iteration limits and tolerances). The timed call includes building the operator. Rounds are
interleaved (a rotating order), the time is the median; a tool ``SLOW`` times slower than
the baseline in the first round is timed once. Each result is compared with a
float64 reference (scipy eigsh at tol 1e-10 on a hand-written float64 HVP); a result whose
largest relative eigenvalue error exceeds ``WRONG_AT`` is marked WRONG.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.sparse.linalg as sla  # noqa: E402
import torch  # noqa: E402

import curvops  # noqa: E402
from benchmarks import floor  # noqa: E402
from benchmarks.output import finish  # noqa: E402
from benchmarks.peers import available  # noqa: E402
from benchmarks.problems import PROBLEMS, Problem  # noqa: E402

K, TOL = 10, 1e-4
WRONG_AT = 1e-4  # largest relative error of the k eigenvalues against the reference
REF_TOL = 1e-10
SLOW = 10.0  # a tool this many times slower than the baseline in round 1 is not repeated
FULL_PROBLEMS, QUICK_PROBLEMS = ("digits", "transformer", "mlp"), ("digits",)
BASELINE = "scipy eigsh(curvlinops)"  # the target: curvops <= 0.5x its wall time

Solver = Callable[[Problem, np.ndarray], tuple[np.ndarray, int]]


@dataclass
class EigenRow:
    problem: str
    tool: str
    seconds: float = float("nan")
    n_matvecs: int = 0
    rel_error: float = float("nan")
    ok: bool = True
    peer: bool = False
    x_baseline: float = float("nan")
    eigenvalues: list | None = None


class Counted:
    """A product function that counts its columns."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.count = fn, 0

    def __call__(self, x):
        ndim = getattr(x, "ndim", 1)  # PyHessian passes a list of tensors: one vector
        self.count += 1 if ndim == 1 else x.shape[-1]
        return self.fn(x)


# ---------------------------------------------------------------- the tools
def curvops_solver(backend: str) -> Solver:
    def solve(problem: Problem, v0: np.ndarray) -> tuple[np.ndarray, int]:
        op = curvops.HessianOperator(problem.model, problem.loss_fn, problem.data)
        res = curvops.eigsh(op, k=K, which="LA", tol=TOL, backend=backend, v0=v0)
        return res.eigenvalues, res.n_matvecs

    return solve


def curvlinops_scipy(problem: Problem, v0: np.ndarray) -> tuple[np.ndarray, int]:
    from curvlinops import HessianLinearOperator

    params = list(problem.model.parameters())
    op = HessianLinearOperator(
        problem.model, problem.loss_fn, params, problem.data, check_deterministic=False
    ).to_scipy()
    mv = Counted(op.matvec)
    lin = sla.LinearOperator(op.shape, matvec=mv, dtype=op.dtype)
    vals = sla.eigsh(lin, k=K, which="LA", tol=TOL, v0=v0)[0]
    return vals, mv.count


def _eigenthings_op(problem: Problem):
    from hessian_eigenthings.operators.hessian import HessianOperator

    loss_fn = problem.loss_fn
    op = HessianOperator(problem.model, problem.data, lambda m, b: loss_fn(m(b[0]), b[1]))
    op.matvec = Counted(op.matvec)  # its algorithms call operator.matvec
    return op


def eigenthings_lanczos(problem: Problem, v0: np.ndarray) -> tuple[np.ndarray, int]:
    from hessian_eigenthings import lanczos

    op = _eigenthings_op(problem)
    res = lanczos(op, k=K, which="LA", seed=0)
    return res.eigenvalues.double().cpu().numpy(), op.matvec.count


def eigenthings_power(problem: Problem, v0: np.ndarray) -> tuple[np.ndarray, int]:
    from hessian_eigenthings import deflated_power_iteration

    op = _eigenthings_op(problem)
    res = deflated_power_iteration(op, k=K, seed=0)
    return res.eigenvalues.double().cpu().numpy(), op.matvec.count


def pyhessian_power(problem: Problem, v0: np.ndarray) -> tuple[np.ndarray, int]:
    from pyhessian import hessian

    cuda = next(problem.model.parameters()).is_cuda
    h = hessian(problem.model, problem.loss_fn, dataloader=problem.data, cuda=cuda)
    h.dataloader_hv_product = Counted(h.dataloader_hv_product)
    torch.manual_seed(0)  # its start vectors come from the global generator
    vals = h.eigenvalues(top_n=K)[0]
    return np.asarray(vals, dtype=np.float64), h.dataloader_hv_product.count


OURS: dict[str, Solver] = {
    f"curvops eigsh({b})": curvops_solver(b) for b in ("arpack", "lanczos", "lobpcg")
}
PEERS: dict[str, tuple[str, Solver]] = {
    BASELINE: ("curvlinops", curvlinops_scipy),
    "eigenthings lanczos": ("hessian_eigenthings", eigenthings_lanczos),
    "eigenthings power": ("hessian_eigenthings", eigenthings_power),
    "pyhessian power": ("pyhessian", pyhessian_power),
}


def tools(problem_name: str) -> tuple[dict[str, Solver], set[str]]:
    """curvops's solvers and the installed peers (a note for each missing one)."""
    found = dict(OURS)
    peers = set()
    for name, (module, solver) in PEERS.items():
        if available(module):
            importlib.import_module(module)  # import time stays out of the timed call
            found[name] = solver
            peers.add(name)
        else:
            print(f"  note: {name} skipped: {module} is not installed")
    return found, peers


# ---------------------------------------------------------------- reference and timing
def reference(problem: Problem, v0: np.ndarray) -> np.ndarray:
    """The k largest eigenvalues in float64: scipy eigsh at tol 1e-10 on the floor's HVP."""
    p64 = problem.to(str(next(problem.model.parameters()).device), torch.float64)
    mv = floor.double_backward_hvp(p64)
    device = next(p64.model.parameters()).device

    def f(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(x).reshape(-1), dtype=torch.float64, device=device)
        return mv(v).detach().cpu().numpy()

    lin = sla.LinearOperator((problem.num_params,) * 2, matvec=f, dtype=np.float64)
    vals = sla.eigsh(lin, k=K, which="LA", tol=REF_TOL, v0=v0, return_eigenvectors=False)
    return np.sort(vals)[::-1]


def rel_error(vals: np.ndarray, ref: np.ndarray) -> float:
    """Largest |λ_i − λ_i^ref| / |λ_i^ref| over the k values (sorted descending); a missing
    or non-finite value counts as infinitely wrong."""
    vals = np.sort(np.asarray(vals, dtype=np.float64))[::-1]
    if vals.shape != ref.shape or not np.isfinite(vals).all():
        return float("inf")
    return float(np.max(np.abs(vals - ref) / np.abs(ref)))


def run_rounds(solvers: dict[str, Solver], problem: Problem, v0, rounds: int) -> dict:
    """{tool: (median seconds, products, eigenvalues of the last round)}, interleaved; a tool
    ``SLOW`` times slower than the baseline (or the slowest curvops backend) in the first
    round is timed once (the power iterations: minutes each)."""
    names = list(solvers)
    times: dict[str, list[float]] = {n: [] for n in names}
    out: dict[str, tuple] = {}
    for r in range(rounds):
        if r == 1:
            names = [n for n in names if times[n][0] <= SLOW * _reference_time(times)]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            copy = problem.copy()  # hooks and model.eval() stay on the copy
            start = time.perf_counter()
            vals, count = solvers[name](copy, v0.copy())
            times[name].append(time.perf_counter() - start)
            out[name] = (vals, count)
            print(f"  {name}: {times[name][-1]:.2f} s, {count} products", flush=True)
    return {n: (statistics.median(t), *out[n]) for n, t in times.items()}


def _reference_time(times: dict[str, list[float]]) -> float:
    base = times.get(BASELINE) or [max(times[n][0] for n in OURS if n in times)]
    return base[0]


def bench_problem(name: str, quick: bool, rounds: int, device: str) -> list[EigenRow]:
    problem = PROBLEMS[name](quick).to(device)
    print(f"\n== eigen {name}: P = {problem.num_params:,}, N = {problem.num_data:,}", flush=True)
    v0 = np.random.default_rng(0).standard_normal(problem.num_params)
    start = time.perf_counter()
    ref = reference(problem, v0)
    print(f"  reference ({time.perf_counter() - start:.1f} s): {np.array2string(ref, precision=5)}")
    solvers, peers = tools(name)
    floor.gradient(problem)()  # warm up autograd before the first timed call
    results = run_rounds(solvers, problem, v0, rounds)
    rows = []
    for tool, (seconds, vals, count) in results.items():
        err = rel_error(vals, ref)
        values = [float(v) for v in np.sort(vals)[::-1]]
        row = EigenRow(name, tool, seconds, int(count), err, err <= WRONG_AT, tool in peers)
        row.eigenvalues = values
        rows.append(row)
    base = [r.seconds for r in rows if r.tool == BASELINE and r.ok]
    for row in rows:
        row.x_baseline = row.seconds / base[0] if base else float("nan")
    return rows


# ---------------------------------------------------------------- report
def print_table(rows: list[EigenRow]) -> None:
    print(
        f"\n| problem | tool | seconds | products | x {BASELINE} | max rel. error |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        err = f"{r.rel_error:.1e}" + ("" if r.ok else " WRONG")
        print(
            f"| {r.problem} | {r.tool} | {r.seconds:.2f} | {r.n_matvecs} | "
            f"{r.x_baseline:.2f} | {err} |"
        )


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the digits problem only, 1 round")
    p.add_argument("--check", action="store_true", help="exit 1 if a curvops result is wrong")
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    p.add_argument("--table", type=Path, help="print the table of a saved --json run and exit")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, help="timed rounds (default 1 quick, 2 full)")
    p.add_argument("--problems", nargs="+", choices=list(FULL_PROBLEMS))
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[EigenRow]:
    """The eigen section (also called by run.py with its own --quick / --device)."""
    names = args.problems or (QUICK_PROBLEMS if args.quick else FULL_PROBLEMS)
    rounds = args.rounds or (1 if args.quick else 2)
    return [row for n in names for row in bench_problem(n, args.quick, rounds, args.device)]


def wrong(rows: list[EigenRow]) -> list[EigenRow]:
    """curvops rows marked WRONG (printed)."""
    bad = [r for r in rows if not r.ok and not r.peer]
    for r in bad:
        print(f"WRONG: eigen {r.problem} {r.tool}: max rel. error {r.rel_error:.1e}")
    return bad


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        print_table([EigenRow(**r) for r in json.loads(args.table.read_text())])
        return 0
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    return finish(run(args), args, print_table, wrong, start)


if __name__ == "__main__":
    sys.exit(main())
