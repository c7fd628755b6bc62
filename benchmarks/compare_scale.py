"""Exact GGN vs KFAC and EKFAC on a ResNet-18 (11.2 M parameters), 256 images of 3x32x32.

python benchmarks/compare_scale.py [--k 3] [--probes 8] [--solve-maxiter 10] [--eig-maxiter 4]
                                   [--threads 2] [--json OUT]

Each measurement runs in a fresh process (``--part``) with ``MALLOC_MMAP_THRESHOLD_`` set,
so the resident set falls when memory is freed (``benchmarks.timing.PeakRss``):
  train:    one training step (forward, backward, SGD with momentum) over the 4 batches of 64:
            its time and the peak resident set above the process's level before it;
  gradient: one full-data gradient in eval mode (the floor of the products);
  compare:  building GGNOperator, KFACOperator, EKFACOperator on KFAC's factors (kfac=) and
            ``compare(ggn, {KFAC, EKFAC}, k, n_probes, solve_maxiter, eig_maxiter)``: the time of each
            part, ``Comparison.cost`` (products per operator, memory estimate), the peak
            resident set above the level before building.
Ratios: compare's peak / the training step's peak (both above the process's level, and
both as whole-process peaks), its products against the floor's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.resnet import resnet_problem  # noqa: E402
from benchmarks.timing import PeakRss, rss_mib  # noqa: E402


def train_step() -> dict:
    model, loss_fn, data = resnet_problem()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    before = rss_mib()
    with PeakRss() as probe:
        start = time.perf_counter()
        opt.zero_grad()
        for X, y in data:
            (loss_fn(model(X), y) * len(y) / 256).backward()
        opt.step()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_extra_mib": probe.peak, "peak_mib": before + probe.peak}


def gradient() -> dict:
    model, loss_fn, data = resnet_problem()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.zero_grad()
        for X, y in data:
            (loss_fn(model(X), y) * len(y) / 256).backward()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times)}


def compare_run(k: int, probes: int, solve_maxiter: int, eig_maxiter: int) -> dict:
    import curvops
    from curvops.compare import compare

    model, loss_fn, data = resnet_problem()
    before, seconds = rss_mib(), {}
    with PeakRss() as probe:
        start = time.perf_counter()
        ggn = curvops.GGNOperator(model, loss_fn, data)
        kfac = curvops.KFACOperator(model, loss_fn, data)
        seconds["build GGN + KFAC"] = time.perf_counter() - start
        start = time.perf_counter()
        ekfac = curvops.EKFACOperator(model, loss_fn, data, kfac=kfac)  # KFAC's factors
        seconds["build EKFAC"] = time.perf_counter() - start
        start = time.perf_counter()
        rep = compare(
            ggn, {"KFAC": kfac, "EKFAC": ekfac}, k=k, n_probes=probes,
            solve_maxiter=solve_maxiter, eig_maxiter=eig_maxiter,
        )  # fmt: skip
        seconds["compare"] = time.perf_counter() - start
    return {
        "P": ggn.shape[0],
        "seconds": seconds,
        "peak_extra_mib": probe.peak,
        "peak_mib": before + probe.peak,
        "cost": rep.cost,
        "summary": rep.summary(),
        "report": rep.to_dict(),
    }


def part(name: str, args: argparse.Namespace) -> dict:
    """One measurement in a fresh process; its JSON result."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, __file__, "--part", name, "--k", str(args.k), "--probes",
           str(args.probes), "--solve-maxiter", str(args.solve_maxiter), "--eig-maxiter",
           str(args.eig_maxiter), "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--solve-maxiter", type=int, default=10)
    p.add_argument("--eig-maxiter", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    p.add_argument("--json", type=Path)
    p.add_argument("--part", choices=["train", "gradient", "compare"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.part:
        fn = {"train": train_step, "gradient": gradient}.get(args.part)
        result = (
            fn() if fn else compare_run(args.k, args.probes, args.solve_maxiter, args.eig_maxiter)
        )
        print(json.dumps(result))
        return
    results = {name: part(name, args) for name in ("train", "gradient", "compare")}
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(results: dict) -> str:
    train, grad, cmp = results["train"], results["gradient"], results["compare"]
    total = sum(cmp["seconds"].values())
    lines = [
        f"P = {cmp['P']:,}; gradient {grad['seconds']:.2f} s; training step "
        f"{train['seconds']:.2f} s, peak +{train['peak_extra_mib']:.0f} MiB "
        f"(process {train['peak_mib']:.0f} MiB)",
        *(f"{name}: {s:.1f} s" for name, s in cmp["seconds"].items()),
        f"total {total:.1f} s ({total / 60:.1f} min)",
        f"compare peak +{cmp['peak_extra_mib']:.0f} MiB = "
        f"{cmp['peak_extra_mib'] / train['peak_extra_mib']:.1f}x the training step's; process "
        f"{cmp['peak_mib']:.0f} MiB = {cmp['peak_mib'] / train['peak_mib']:.1f}x",
        f"cost: {json.dumps(cmp['cost'])}",
        cmp["summary"],
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
