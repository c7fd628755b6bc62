"""`curvops demo`: an MLP and a CNN trained on sklearn's digits, and their curvature.

For each model: the Hessian's top-k and bottom eigenvalues, its spectral density (SLQ),
the per-layer top eigenvalues with normalised scores, and the exact GGN against KFAC and
EKFAC. Writes results.json and five figures; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import curvops
from curvops import plot
from curvops.cli.digits import accuracy, load_digits_data, make_cnn, make_mlp, train
from curvops.cli.runtime import prepare_runtime
from curvops.compare import Comparison, compare
from curvops.linalg.results import BlockEigenvalues, Density, EigenResult


@dataclass
class Analysis:
    """What the demo computed for one model, for its figures."""

    top: EigenResult
    density: Density
    layers: BlockEigenvalues
    comparison: Comparison
    layer_labels: list[str]


def _say(msg: str) -> None:
    print(msg, flush=True)


def analyse(name: str, model: nn.Module, batches, k: int, progress: bool) -> tuple[dict, Analysis]:
    """The curvature analysis of one trained model: a JSON-ready dict and its objects."""
    loss_fn = nn.CrossEntropyLoss()
    H = curvops.HessianOperator(model, loss_fn, batches, progress=False)
    _say(f"[{name}] {H.shape[0]:,} parameters, {H.num_data} training points")
    top = curvops.eigsh(H, k=k, which="LA", tol=1e-6, progress=progress)
    # the bottom is a near-zero cluster: Lanczos judges convergence against the largest
    # Ritz value it sees (≈ ‖H‖), ARPACK against the tiny bottom values themselves
    bottom = curvops.eigsh(H, k=3, which="SA", tol=1e-6, backend="lanczos")
    _say(f"[{name}] Hessian top-{k}: " + " ".join(f"{v:.4g}" for v in top.eigenvalues))
    _say(f"[{name}] Hessian bottom-3: " + " ".join(f"{v:.3g}" for v in bottom.eigenvalues))
    density = curvops.spectral_density(H, n_probes=8, lanczos_steps=60)
    layers = curvops.block_top_eigenvalues(
        curvops.HessianOperator(model, loss_fn, batches, blocks="layer"), normalize=True
    )
    for lname, lam, score in zip(layers.names, layers.eigenvalues, layers.scores):
        _say(f"[{name}] layer {lname:>3}: λ_max = {lam:9.4g}   score = {score:.3f}")
    G = curvops.GGNOperator(model, loss_fn, batches)
    approx = {
        "KFAC": curvops.KFACOperator(model, loss_fn, batches),
        "EKFAC": curvops.EKFACOperator(model, loss_fn, batches),
    }
    report = compare(G, approx, k=k, exact_name="GGN")
    _say(f"[{name}] GGN vs KFAC vs EKFAC:\n{report.summary()}")
    results = {
        "num_params": H.shape[0],
        "hessian_top": top.to_dict(),
        "hessian_bottom": bottom.to_dict(),
        "density": density.to_dict(),
        "layers": layers.to_dict(),
        "comparison": report.to_dict(),
    }
    labels = plot.layer_labels(model, layers.names)
    return results, Analysis(top, density, layers, report, labels)


def demo(out: Path, device: str | None = None, k: int = 10, progress: bool = True) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict = {"device": device}
    objects: dict[str, Analysis] = {}
    for name, images, factory in (("MLP", False, make_mlp), ("CNN", True, make_cnn)):
        torch.manual_seed(0)
        data = load_digits_data(images=images, device=device)
        model = factory().to(device)
        history = train(model, data)
        acc = accuracy(model, data.test)
        _say(f"[{name}] trained: loss {history[-1]:.4f}, test accuracy {acc:.3f}")
        res, objects[name] = analyse(name, model, data.train, k, progress)
        results[name] = {"train_loss": history, "test_accuracy": acc, **res}
    _figures(out, objects)
    results["seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _say(f"wrote {out / 'results.json'} and figures in {results['seconds']:.0f} s")
    return results


def _figures(out: Path, objects: dict[str, Analysis]) -> None:
    plot.plot_spectrum(
        {n: a.top for n, a in objects.items()},
        path=out / "spectrum.png",
        title="Hessian: top eigenvalues",
    )
    fig, axes = plot.subplots(len(objects))
    for ax, (name, a) in zip(axes, objects.items()):
        plot.plot_density(a.density, ax=ax, log=True, title=f"{name}: Hessian spectral density")
    plot.save(fig, out / "density.png")
    fig, axes = plot.subplots(len(objects))
    for ax, (name, a) in zip(axes, objects.items()):
        plot.plot_layers(
            a.layer_labels,
            a.layers.scores,
            ax=ax,
            title=f"{name}: layer scores |λ_b| / max |λ|",
            ylabel="normalised score",
        )
    plot.save(fig, out / "layers.png")
    for name, a in objects.items():
        a.comparison.plot(out / f"comparison_{name.lower()}.png")


def run_demo(args) -> dict:
    """`curvops demo`: train an MLP and a CNN on digits; spectra, density, layers, comparison."""
    prepare_runtime(args.device, args.threads)
    return demo(Path(args.out), device=args.device, k=args.k, progress=args.progress)
