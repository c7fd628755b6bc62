"""`curvops demo`: an MLP and a CNN trained on sklearn's digits, and their curvature.

For each model, one ``curvops.analyze`` call: the Hessian's top-k and bottom eigenvalues
with their bounds, its trace and spectral density (SLQ), the per-layer top eigenvalues with
normalised scores, the exact GGN against KFAC and EKFAC, and the loss along the top three
eigenvectors. Then a short tracked run (``curvops.cli.demo_track``): the MLP from scratch
under full-batch GD, its sharpness rising to 2/η, measured by a ``CurvatureTracker``.
Writes results.json, five figures, per model a report folder (report.json with provenance,
report.png) and landscape_<model>.png, and the tracked run's track.jsonl and track.png;
about a minute on 2 CPU cores. The figures are those of `curvops spectrum` and `compare`,
one panel per model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import curvops
from curvops import plot
from curvops.cli.demo_track import describe, tracked_run
from curvops.cli.digits import accuracy, load_digits_data, make_cnn, make_mlp, train
from curvops.cli.output import check_out, claim_out
from curvops.cli.runtime import check_device, set_threads
from curvops.report.analyze import DEFAULT_PARTS
from curvops.report.figure import plot_panel
from curvops.report.progress import Feedback


def _say(msg: str) -> None:
    print(msg, flush=True)


def analyse(name: str, model: nn.Module, batches, k: int, progress: bool, out: Path):
    """The curvature report of one trained model: a JSON-ready dict and the Report."""
    report = curvops.analyze(
        model,
        nn.CrossEntropyLoss(),
        batches,
        k=k,
        bottom=3,
        tol=1e-6,
        n_probes=100,
        density_probes=8,
        lanczos_steps=60,
        parts=[*DEFAULT_PARTS, "landscape"],
        compare=["kfac", "ekfac"],
        progress=Feedback(bars=progress, lines=sys.stdout, notes=sys.stderr),
    )
    _say(f"[{name}] {report.summary()}")
    report.model = name  # figure titles name the model as the demo does
    report.save(out / f"report_{name.lower()}", vectors=False)
    report.plot_landscapes(out / f"landscape_{name.lower()}.png")
    assert report.top and report.bottom and report.density and report.layers and report.comparison
    cut = report.landscapes[0]
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
    claim_out(out, "demo")
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
    results["track"], _ = tracked_run(out, device=device)
    _say(f"[track] {describe(results['track'])}")
    results["seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _say(f"wrote {out / 'results.json'} and figures in {results['seconds']:.0f} s")
    return results


def _figures(out: Path, reports: dict[str, curvops.Report]) -> None:
    """spectrum.png, density.png, layers.png: the report panels of both models side by side
    (the panels of `curvops spectrum`); comparison_<model>.png."""
    for panel in ("spectrum", "density", "layers"):
        fig, axes = plot.subplots(len(reports), size=(5.4, 4.0))
        for ax, r in zip(axes, reports.values()):
            plot_panel(r, panel, ax=ax)  # titled "MLP: Hessian, ..."
        fig.tight_layout()
        plot.save(fig, out / f"{panel}.png")
    for name, r in reports.items():
        assert r.comparison is not None
        plot.plot_comparison(r.comparison, out / f"comparison_{name.lower()}.png", title=name)


def run_demo(args) -> dict:
    """`curvops demo`: train an MLP and a CNN on digits; one curvature report per model."""
    check_device(args.device)
    out = check_out(args.out, "demo")
    set_threads(args.threads or 1)  # both models are small (see runtime.SMALL_MODEL)
    return demo(out, device=args.device, k=args.k, progress=args.progress)
