"""Curvature over training: warm-started measurements against cold ones, on real training runs.

The digits MLP (64-32-32-10 tanh, P = 3,466) and the small CNN (P = 640) of ``curvops demo``
train with Adam (lr 1e-2, batches of 256, as ``curvops.cli.digits.train``); every 25 steps
the top-10 Hessian eigenvalues of a fixed probe set (the first 512 training points) are
measured at tol 1e-4 three ways: the tracker's warm start (Lanczos from the previous Ritz
vectors), the block start (LOBPCG from the previous vectors + 3 fresh ones), and a cold
``curvops.eigsh`` (Lanczos at its defaults; the reference). Also per-layer top eigenvalues:
the tracker's warm per-block solves against a cold ``block_top_eigenvalues``.

    .venv/bin/python benchmarks/track.py [--steps 300] [--json benchmarks/results_track_cpu.json]

Products are counted (``n_matvecs``), seconds are wall time; the order of the three solves
rotates per measurement so that they share the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import curvops  # noqa: E402
from curvops.cli.digits import load_digits_data, make_cnn, make_mlp  # noqa: E402
from curvops.track import CurvatureTracker, layer_top_eigenvalues  # noqa: E402

K, TOL, EVERY = 10, 1e-4, 25
HERE = Path(__file__).resolve().parent


def rel_diff(a, b) -> float:
    """max_i |a_i − b_i| / |b_i|."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.abs(b)))


class Run:
    """One training run with its three eigensolvers and the layer solves."""

    def __init__(self, name: str, model: nn.Module, probe, layers: bool) -> None:
        self.name, self.model, self.loss_fn = name, model, nn.CrossEntropyLoss()
        self.warm = CurvatureTracker(model, self.loss_fn, probe, EVERY, K, tol=TOL)
        self.block = CurvatureTracker(
            model, self.loss_fn, probe, EVERY, K, tol=TOL, method="lobpcg", gradient=False
        )
        self.cold_op = curvops.HessianOperator(model, self.loss_fn, probe)
        self.layer_op = curvops.HessianOperator(model, self.loss_fn, probe, blocks="layer")
        self.layers, self.layer_vectors = layers, None
        self.rows: list[dict] = []
        self.train_seconds = self.tracker_seconds = 0.0
        start = time.perf_counter()
        curvops.HessianOperator(model, self.loss_fn, probe)
        self.build_seconds = time.perf_counter() - start

    def measure(self, step: int, rotation: int) -> dict:
        jobs = {"warm": self._warm, "block": self.block.step, "cold": self._cold}
        names = list(jobs)
        names = names[rotation % 3 :] + names[: rotation % 3]
        out = {name: jobs[name]() for name in names}
        w, b, c = out["warm"], out["block"], out["cold"]
        row = {
            "step": step, "sharpness": c.eigenvalues[0], "lambda_k": c.eigenvalues[-1],
            "cold_products": c.n_matvecs, "cold_s": c.seconds,
            "warm_products": w.matvecs["eigsh"], "warm_s": w.seconds,
            "warm_diff": rel_diff(w.eigenvalues, c.eigenvalues), "warm_converged": w.all_converged,
            "block_products": b.matvecs["eigsh"], "block_s": b.seconds,
            "block_diff": rel_diff(b.eigenvalues, c.eigenvalues), "block_converged": b.all_converged,
            "drift": w.drift, "warm_eigenvalues": w.eigenvalues, "cold_eigenvalues": c.eigenvalues.tolist(),
        }  # fmt: skip
        if self.layers:
            row.update(self._layer_solves())
        self.rows.append(row)
        return row

    def _warm(self):
        start = time.perf_counter()
        record = self.warm.step()
        self.tracker_seconds += time.perf_counter() - start
        return record

    def _cold(self):
        return curvops.eigsh(self.cold_op, k=K, tol=TOL)

    def _layer_solves(self) -> dict:
        cold = curvops.block_top_eigenvalues(self.layer_op, normalize=True, tol=TOL)
        warm = layer_top_eigenvalues(self.layer_op, self.layer_vectors, tol=TOL)
        self.layer_vectors = warm.vectors
        return {
            "layers_cold_products": cold.n_matvecs, "layers_warm_products": warm.n_matvecs,
            "layers_cold_s": cold.seconds, "layers_warm_s": warm.seconds,
            "layers_diff": rel_diff(warm.eigenvalues, cold.eigenvalues),
        }  # fmt: skip

    def skip_schedule(self) -> None:
        """The trackers count steps between measurements (no measurement is due)."""
        self.block.count += 1
        self.warm.count += 1


def train(run: Run, data, steps: int) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(run.model.parameters(), lr=1e-2)
    batches = [b for _ in range(steps // len(data.train) + 1) for b in data.train][:steps]
    for step, (X, y) in enumerate(batches, start=1):
        start = time.perf_counter()
        opt.zero_grad()
        run.loss_fn(run.model(X), y).backward()
        opt.step()
        run.train_seconds += time.perf_counter() - start
        if step % EVERY == 0:
            run.measure(step, step // EVERY)
            print(_line(run.rows[-1]), flush=True)
        else:
            run.skip_schedule()


def _line(r: dict) -> str:
    return (
        f"  step {r['step']:4d}  λ1 {r['sharpness']:.4g}  cold {r['cold_products']:3d} "
        f"warm {r['warm_products']:3d} block {r['block_products']:3d}  "
        f"Δ {r['warm_diff']:.1e} / {r['block_diff']:.1e}"
    )


def summary(run: Run) -> dict:
    rows = run.rows[1:]  # the first measurement starts cold for every method
    total = {key: sum(r[key] for r in rows) for key in rows[0] if key.endswith(("products", "_s"))}
    return {
        "name": run.name,
        "P": run.cold_op.shape[0],
        "measurements": len(run.rows),
        "warm_over_cold_products": total["warm_products"] / total["cold_products"],
        "block_over_cold_products": total["block_products"] / total["cold_products"],
        "warm_over_cold_seconds": total["warm_s"] / total["cold_s"],
        "block_over_cold_seconds": total["block_s"] / total["cold_s"],
        "max_warm_diff": max(r["warm_diff"] for r in run.rows),
        "max_block_diff": max(r["block_diff"] for r in run.rows),
        "all_converged": all(r["warm_converged"] and r["block_converged"] for r in run.rows),
        "train_seconds": run.train_seconds,
        "tracker_seconds": run.tracker_seconds,
        "overhead": run.tracker_seconds / run.train_seconds,
        "build_seconds": run.build_seconds,
        "totals": total,
        **layer_summary(run),
    }


def interval_sweep(intervals=(1, 5, 25), steps: int = 100) -> list[dict]:
    """Warm against cold on the digits MLP when measuring every 1, 5, 25 steps: how the
    saving depends on how far the eigenvectors move between measurements."""
    data, loss_fn, out = load_digits_data(), nn.CrossEntropyLoss(), []
    for every in intervals:
        torch.manual_seed(0)
        model = make_mlp()
        warm = CurvatureTracker(model, loss_fn, data.train[:2], every, K, tol=TOL, gradient=False)
        cold_op = curvops.HessianOperator(model, loss_fn, data.train[:2])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        batches = [b for _ in range(steps // len(data.train) + 1) for b in data.train][:steps]
        rows = []
        for X, y in batches:
            opt.zero_grad()
            loss_fn(model(X), y).backward()
            opt.step()
            record = warm.step()
            if record is not None:
                cold = curvops.eigsh(cold_op, k=K, tol=TOL)
                rows.append((record, cold))
        rows = rows[1:]  # the first measurement is cold for both
        w = sum(r.matvecs["eigsh"] for r, _ in rows)
        c = sum(cold.n_matvecs for _, cold in rows)
        out.append({
            "every": every, "measurements": len(rows), "warm_per_measurement": w / len(rows),
            "cold_per_measurement": c / len(rows), "warm_over_cold": w / c,
            "max_diff": max(rel_diff(r.eigenvalues, cold.eigenvalues) for r, cold in rows),
            "mean_drift": float(np.mean([r.drift for r, _ in rows])),
        })  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    return out


def sweep_table(rows: list[dict]) -> str:
    lines = [
        "| measure every | measurements | cold products / measurement | warm products / "
        "measurement | warm / cold | max rel. Δλ | mean drift 1 − ‖U_prevᵀU‖²_F / k |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['every']} | {r['measurements']} | {r['cold_per_measurement']:.1f} | "
            f"{r['warm_per_measurement']:.1f} | {r['warm_over_cold']:.2f} | {r['max_diff']:.1e} | "
            f"{r['mean_drift']:.3f} |"
        )
    return "\n".join(lines)


def layer_summary(run: Run) -> dict:
    rows = [r for r in run.rows[1:] if "layers_cold_products" in r]
    if not rows:
        return {}
    cold = sum(r["layers_cold_products"] for r in rows)
    warm = sum(r["layers_warm_products"] for r in rows)
    return {
        "layers_cold_per_measurement": cold / len(rows),
        "layers_warm_per_measurement": warm / len(rows),
        "layers_warm_over_cold": warm / cold,
        "layers_max_diff": max(r["layers_diff"] for r in run.rows),
    }


def table(runs: list[Run]) -> str:
    head = (
        "| run | step | λ_1 | cold products | cold s | warm products | warm s | warm/cold "
        "| max rel. Δλ warm | block products | block s | max rel. Δλ block |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for run in runs:
        for r in run.rows:
            lines.append(
                f"| {run.name} | {r['step']} | {r['sharpness']:.4g} | {r['cold_products']} | "
                f"{r['cold_s']:.3f} | {r['warm_products']} | {r['warm_s']:.3f} | "
                f"{r['warm_products'] / r['cold_products']:.2f} | {r['warm_diff']:.1e} | "
                f"{r['block_products']} | {r['block_s']:.3f} | {r['block_diff']:.1e} |"
            )
    return "\n".join(lines)


def figure(rows_by_run: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows_by_run)
    fig, axes = plt.subplots(n, 2, figsize=(11, 3.6 * n), squeeze=False)
    for (name, rows), (left, right) in zip(rows_by_run.items(), axes):
        steps = [r["step"] for r in rows]
        for key, label, style in (
            ("cold_products", "cold eigsh (Lanczos)", "ko-"),
            ("warm_products", "warm: Lanczos from previous Ritz vectors", "o-"),
            ("block_products", "warm: LOBPCG block start", "s--"),
        ):
            left.plot(steps, [r[key] for r in rows], style, ms=4, label=label)
        left.axhline(K, color="0.6", lw=0.8, ls=":", label=f"k = {K} (least possible)")
        target = 0.3 * np.mean([r["cold_products"] for r in rows])
        left.axhline(target, color="C3", lw=0.8, ls="-.", label="target: 0.3 x cold")
        top = 1.6 * max(r["block_products"] for r in rows)
        left.set(xlabel="training step", ylabel="products", ylim=(0, top),
                 title=f"{name}: products per measurement (top-{K}, tol {TOL:g})")  # fmt: skip
        left.legend(fontsize=7, loc="upper center", ncol=2)
        values = np.array([r["cold_eigenvalues"] for r in rows])
        for j in range(K - 1, 0, -1):
            right.plot(steps, values[:, j], color="0.8", lw=0.8)
        right.plot(steps, values[:, 0], "o-", ms=4, label="λ_1 (sharpness)")
        right.plot([], [], color="0.8", label=f"λ_2 .. λ_{K}")
        right.set(xlabel="training step", ylabel="Hessian eigenvalue",
                  title=f"{name}: top-{K} Hessian eigenvalues (Adam, lr 1e-2)")  # fmt: skip
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--no-layers", dest="layers", action="store_false")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false")
    parser.add_argument("--replot", action="store_true", help="redraw the figure from --json")
    parser.add_argument("--json", default=str(HERE / "results_track_cpu.json"))
    parser.add_argument("--figure", default=str(HERE / "track.png"))
    args = parser.parse_args()
    if args.replot:
        figure(json.loads(Path(args.json).read_text())["rows"], Path(args.figure))
        return 0
    torch.set_num_threads(1)
    runs = []
    for name, images, make in (("digits MLP", False, make_mlp), ("digits CNN", True, make_cnn)):
        data = load_digits_data(images=images)
        torch.manual_seed(0)
        run = Run(name, make(), data.train[:2], args.layers)
        print(f"{name}: P = {run.cold_op.shape[0]:,}, {args.steps} steps", flush=True)
        train(run, data, args.steps)
        runs.append(run)
    print(table(runs))
    summaries = [summary(run) for run in runs]
    for s in summaries:
        print(json.dumps({k: v for k, v in s.items() if k != "totals"}))
    sweep = interval_sweep() if args.sweep else []
    if sweep:
        print(sweep_table(sweep))
    results = {"summaries": summaries, "sweep": sweep, "rows": {r.name: r.rows for r in runs}}
    Path(args.json).write_text(json.dumps(results, indent=1))
    figure({run.name: run.rows for run in runs}, Path(args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
