"""`curvops demo`: an MLP and a CNN trained on sklearn's digits, and their curvature.

For each model, one ``curvops.analyze`` call: the Hessian's top-k and bottom eigenvalues
with their bounds, its trace and spectral density (SLQ), the per-layer top eigenvalues with
normalised scores, and the exact GGN against KFAC and EKFAC; then the loss along the top
eigenvector. Writes results.json, five figures, and per model a report folder (report.json
with provenance, report.png) and landscape_<model>.png; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

import curvops
from curvops import plot
from curvops.cli.digits import accuracy, load_digits_data, make_cnn, make_mlp, train
from curvops.cli.runtime import prepare_runtime


def _say(msg: str) -> None:
    print(msg, flush=True)


def analyse(name: str, model: nn.Module, batches, k: int, progress: bool, out: Path):
    """The curvature report of one trained model: a JSON-ready dict and the Report."""
    loss_fn = nn.CrossEntropyLoss()
    report = curvops.analyze(
        model,
        loss_fn,
        batches,
        k=k,
        bottom=3,
        tol=1e-6,
        n_probes=100,
        density_probes=8,
        lanczos_steps=60,
        compare=["kfac", "ekfac"],
        progress=progress,
    )
    _say(f"[{name}] {report.summary()}")
    report.save(out / f"report_{name.lower()}", vectors=False)
    cut = curvops.landscape(model, loss_fn, batches, report)
    cut.plot(out / f"landscape_{name.lower()}.png")
    assert report.top and report.bottom and report.density and report.layers and report.comparison
    results = {
        "num_params": report.num_params,
        "hessian_top": report.top.to_dict(),
        "hessian_bottom": report.bottom.to_dict(),
        "hessian_trace": report.trace.to_dict() if report.trace else None,
        "density": report.density.to_dict(),
        "layers": report.layers.to_dict(),
        "comparison": report.comparison.to_dict(),
        "landscape_top": {"rayleigh": float(cut.rayleigh[0]), "departure": cut.departure()},
    }
    return results, report


def demo(out: Path, device: str | None = None, k: int = 10, progress: bool = True) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict = {"device": device}
    reports: dict[str, curvops.Report] = {}
    for name, images, factory in (("MLP", False, make_mlp), ("CNN", True, make_cnn)):
        torch.manual_seed(0)
        data = load_digits_data(images=images, device=device)
        model = factory().to(device)
        history = train(model, data)
        acc = accuracy(model, data.test)
        _say(f"[{name}] trained: loss {history[-1]:.4f}, test accuracy {acc:.3f}")
        res, reports[name] = analyse(name, model, data.train, k, progress, out)
        results[name] = {"train_loss": history, "test_accuracy": acc, **res}
    _figures(out, reports)
    results["seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _say(f"wrote {out / 'results.json'} and figures in {results['seconds']:.0f} s")
    return results


def _figures(out: Path, reports: dict[str, curvops.Report]) -> None:
    fig, axes = plot.subplots(1)
    plot.plot_spectrum(
        {n: r.top for n, r in reports.items()}, ax=axes[0], title="Hessian: top eigenvalues"
    )
    axes[0].set(xlabel="index $i$", ylabel=r"eigenvalue $\lambda_i$")
    plot.save(fig, out / "spectrum.png")
    fig, axes = plot.subplots(len(reports))
    for ax, (name, r) in zip(axes, reports.items()):
        plot.plot_density(r.density, ax=ax, log=True, title=f"{name}: Hessian spectral density")
        ax.set(xlabel=r"eigenvalue $\lambda$", ylabel=r"density $\rho(\lambda)$ (log)")
    plot.save(fig, out / "density.png")
    fig, axes = plot.subplots(len(reports))
    for ax, (name, r) in zip(axes, reports.items()):
        assert r.layers is not None
        title = rf"{name}: layer scores $|\lambda_b|\,/\,\mathrm{max}_c |\lambda_c|$"
        plot.plot_layers(
            r.layer_labels, r.layers.scores, ax=ax, title=title, ylabel="normalised score"
        )
    plot.save(fig, out / "layers.png")
    for name, r in reports.items():
        assert r.comparison is not None
        r.comparison.plot(out / f"comparison_{name.lower()}.png")


def run_demo(args) -> dict:
    """`curvops demo`: train an MLP and a CNN on digits; one curvature report per model."""
    prepare_runtime(args.device, args.threads)
    return demo(Path(args.out), device=args.device, k=args.k, progress=args.progress)
