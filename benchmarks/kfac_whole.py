"""KFAC / EKFAC for whole models: construction with every parameter vs the Linear layers only.

python benchmarks/kfac_whole.py [--rounds R] [--cpu] [--memory [--probes N]] [--json OUT]

On the tiny transformer (``problems.transformer``: TinyMixer, Linear layers and LayerNorms,
P = 19,866, 1,024 sequences of 16 tokens, CE): the construction time up to and including
the first product (median of interleaved rounds after a warm-up round, a fresh copy of the
model each) of
  curvops, all parameters (the default: Kronecker blocks for the Linear layers, exact
  fallback blocks for the LayerNorms), curvops on the Linear layers only, curvlinops
  on the Linear layers only (it supports no LayerNorm), when installed, and (KFAC) the raw
  torch floor of the same matrix as curvops's first row (benchmarks/kfac_raw.py);
and with ``--memory`` the peak / held MiB of each (benchmarks/memory.py's RSS probe, a
fresh process per tool, medians of N) on the transformer and on the CNN of benchmarks/kfac.py.
Last, the issue's targets from this run: (a) KFAC's construction with all parameters over
curvlinops's on the Linear layers, (b) EKFAC's peak on the CNN against curvlinops's.
"""

from __future__ import annotations

import argparse
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
from torch import nn  # noqa: E402

import curvops  # noqa: E402
from benchmarks.kfac_raw import raw_kfac  # noqa: E402
from benchmarks.output import save_rows  # noqa: E402
from benchmarks.peers import available  # noqa: E402
from benchmarks.problems import PROBLEMS, Problem  # noqa: E402
from benchmarks.timing import PeakRss, rss_mib  # noqa: E402

FLOOR = "raw torch floor (all parameters)"  # benchmarks/kfac_raw.py: C columns, no checks
CLOCK = time.perf_counter  # --cpu: time.process_time (steadier on a shared machine, 1 thread)


@dataclass
class Row:
    problem: str
    kind: str
    tool: str
    params: int
    construct_s: float
    x_curvlinops: float = float("nan")
    x_floor: float = float("nan")
    peak_mib: float | None = None
    held_mib: float | None = None


def _linear_params(model: nn.Module) -> list[torch.Tensor]:
    return [
        p
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
        for p in m.parameters(recurse=False)
    ]


def _curvops(kind: str, linear_only: bool):
    cls = curvops.KFACOperator if kind == "kfac" else curvops.EKFACOperator

    def build(problem: Problem):
        params = _linear_params(problem.model) if linear_only else None
        op = cls(problem.model, problem.loss_fn, problem.data, params=params)
        return op.torch_matmat, op.shape[0]

    return build


def _curvlinops(kind: str):
    def build(problem: Problem):
        import curvlinops

        cls = curvlinops.KFACLinearOperator if kind == "kfac" else curvlinops.EKFACLinearOperator
        params = _linear_params(problem.model)
        op = cls(
            problem.model, problem.loss_fn, params, problem.data,
            fisher_type="type-2", check_deterministic=False,
        )  # fmt: skip
        return (lambda M: op @ M), sum(p.numel() for p in params)

    return build


def tools(kind: str) -> dict:
    out = {
        "curvops (all parameters)": _curvops(kind, linear_only=False),
        "curvops (Linear only)": _curvops(kind, linear_only=True),
    }
    if kind == "kfac":
        out[FLOOR] = raw_kfac
    if available("curvlinops"):
        out["curvlinops (Linear only)"] = _curvlinops(kind)
    else:
        print("  note: curvlinops is not installed: its rows are skipped")
    return out


def construct(builders: dict, problem: Problem, rounds: int) -> dict[str, tuple[float, int]]:
    """{tool: (median seconds of build + first product, P)}, interleaved rounds after one
    uncounted warm-up round (the process's first build pays torch's lazy initialisation)."""
    names, times, sizes = list(builders), {n: [] for n in builders}, {}
    for r in range(-1, rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            copy = problem.copy()
            start = CLOCK()
            matmat, P = builders[name](copy)
            matmat(torch.ones(P, 1))
            if r >= 0:
                times[name].append(CLOCK() - start)
            sizes[name] = P
    return {n: (statistics.median(times[n]), sizes[n]) for n in names}


def probe(kind: str, tool: str, problem: str, repeats: int = 1) -> tuple[float, float] | None:
    """(peak, held) MiB, medians over ``repeats`` fresh processes."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    cmd = [sys.executable, "-m", "benchmarks.kfac_whole", "--probe", kind, tool, problem]
    results = []
    for _ in range(repeats):
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode or not lines:
            print(f"  note: memory probe failed for {kind} {tool}: {done.stderr[-300:]}")
            return None
        results.append(json.loads(lines[-1]))
    peaks = [r["peak"] for r in results]
    if repeats > 1:
        print(f"  {problem} {kind} {tool}: peaks {peaks}")
    return statistics.median(peaks), statistics.median(r["held"] for r in results)


def targets(rows: list[Row]) -> list[str]:
    """The issue's two targets, from this run's rows."""
    by = {(r.problem, r.kind, r.tool): r for r in rows}
    out = []
    kfac = by.get(("transformer", "kfac", "curvops (all parameters)"))
    if kfac is not None and kfac.x_curvlinops == kfac.x_curvlinops:
        out.append(
            f"(a) KFAC construction, transformer, all parameters / curvlinops's Linear only: "
            f"{kfac.x_curvlinops:.2f}x (target <= 0.70); curvops / the raw torch floor "
            f"{kfac.x_floor:.2f}x"
        )
    mine = by.get(("cnn", "ekfac", "curvops (all parameters)"))
    peer = by.get(("cnn", "ekfac", "curvlinops (Linear only)"))
    if mine and peer and mine.peak_mib is not None and peer.peak_mib is not None:
        out.append(
            f"(b) EKFAC peak MiB on the CNN: curvops {mine.peak_mib:.1f} vs curvlinops "
            f"{peer.peak_mib:.1f} ({mine.peak_mib / peer.peak_mib:.2f}x, target <= 1)"
        )
    return out


def _probe(kind: str, tool: str, name: str) -> None:
    import torch.fx.experimental.symbolic_shapes  # noqa: F401  (sympy, as benchmarks/kfac.py)

    torch.set_num_threads(1)
    problem = PROBLEMS[name](False)
    build = tools(kind)[tool]
    before = rss_mib()
    with PeakRss() as peak:
        matmat, P = build(problem)
        matmat(torch.ones(P, 1))
    print(json.dumps({"peak": round(peak.peak, 1), "held": round(rss_mib() - before, 1)}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--probes", type=int, default=1, help="fresh processes per memory figure")
    p.add_argument("--json", type=Path)
    p.add_argument("--cpu", action="store_true", help="CPU time of this process, not wall")
    p.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        _probe(*args.probe)
        return 0
    torch.set_num_threads(1)
    global CLOCK
    CLOCK = time.process_time if args.cpu else time.perf_counter
    rows = []
    for kind in ("kfac", "ekfac"):
        problem = PROBLEMS["transformer"](False)
        results = construct(tools(kind), problem, args.rounds)
        ref = results.get("curvlinops (Linear only)", (float("nan"), 0))[0]
        floor = results.get(FLOOR, (float("nan"), 0))[0]
        for tool, (seconds, P) in results.items():
            rows.append(Row("transformer", kind, tool, P, seconds, seconds / ref, seconds / floor))
    if args.memory:
        n = args.probes
        for row in rows:
            row.peak_mib, row.held_mib = probe(row.kind, row.tool, "transformer", n) or (None, None)
        for kind in ("kfac", "ekfac"):
            for tool in ("curvops (all parameters)", "curvlinops (Linear only)"):
                if tool in tools(kind) and tool != FLOOR:
                    peak = probe(kind, tool, "cnn", n) or (None, None)
                    nan = float("nan")
                    rows.append(Row("cnn", kind, tool, 25_578, nan, nan, nan, *peak))
    print(
        "\n| problem | kind | tool | P | construction s | x curvlinops | x raw floor | peak MiB "
        "| held MiB |"
    )
    print("|" + " --- |" * 9)
    for r in rows:
        peak = "" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        held = "" if r.held_mib is None else f"{r.held_mib:.0f}"
        print(
            f"| {r.problem} | {r.kind} | {r.tool} | {r.params:,} | {r.construct_s:.3f} | "
            f"{r.x_curvlinops:.2f} | {r.x_floor:.2f} | {peak} | {held} |"
        )
    print()
    for line in targets(rows):
        print(line)
    save_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
