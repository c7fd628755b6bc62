"""The jobs behind the ``curvops`` command: each writes results.json and figures to --out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import curvops
from curvops.cli.factory import call_factory
from curvops.cli.runtime import prepare_runtime
from curvops.compare import block_names, compare
from curvops.core.options import CurvatureKind, choices
from curvops.plot import layer_labels

CURVATURE_KINDS = choices(CurvatureKind)


def build_operator(kind: str, model, loss_fn, data, **kw):
    """``kind`` in hessian, ggn, kfac, ekfac (also "ggn-mc", "ggn-empirical")."""
    kinds = {
        "hessian": lambda: curvops.HessianOperator(model, loss_fn, data, **kw),
        "ggn": lambda: curvops.GGNOperator(model, loss_fn, data, **kw),
        "ggn-mc": lambda: curvops.GGNOperator(model, loss_fn, data, mode="mc", **kw),
        "ggn-empirical": lambda: curvops.GGNOperator(model, loss_fn, data, mode="empirical", **kw),
        "kfac": lambda: curvops.KFACOperator(model, loss_fn, data, **kw),
        "ekfac": lambda: curvops.EKFACOperator(model, loss_fn, data, **kw),
    }
    _check_kinds([kind])
    return kinds[kind]()


def _check_kinds(kinds: list[str]) -> None:
    for kind in kinds:
        if kind not in CURVATURE_KINDS:
            raise ValueError(
                f"unknown curvature {kind!r}; choose from {', '.join(CURVATURE_KINDS)}"
            )


def _prepare(args):
    """Check the options first (cheap), then run the user's factory (maybe slow)."""
    prepare_runtime(args.device, args.threads)
    model, loss_fn, data = call_factory(args.factory)
    if args.device:
        model = model.to(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return model, loss_fn, data, out


def _write(out: Path, results: dict) -> None:
    """results.json, strict JSON: a NaN or inf (an undefined number) is written as null."""
    text = json.dumps(_finite(results), indent=2, allow_nan=False)
    (out / "results.json").write_text(text)
    print(f"wrote {out / 'results.json'}")


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def run_spectrum(args) -> dict:
    """Top-k eigenvalues of one curvature of the user's model (+ density, per-layer)."""
    from curvops.plot import plot_density, plot_layers, plot_spectrum

    model, loss_fn, data, out = _prepare(args)
    op = build_operator(args.curvature, model, loss_fn, data, progress=args.progress)
    print(f"{args.curvature}: {op.shape[0]:,} parameters")
    res = curvops.eigsh(
        op, k=args.k, which=args.which, tol=args.tol, backend=args.backend, progress=args.progress
    )
    print(f"{args.which} eigenvalues ({res.n_matvecs} products, {res.seconds:.1f} s):")
    print("  " + "  ".join(f"{v:.5g}" for v in res.eigenvalues))
    results = {"curvature": args.curvature, "num_params": op.shape[0], "eigsh": _eig_dict(res)}
    plot_spectrum({args.curvature: res.eigenvalues}, path=out / "spectrum.png")
    if args.density:
        dens = curvops.spectral_density(op)
        results["density"] = dens.to_dict()
        plot_density(dens, path=out / "density.png", log=True)
    if args.layers:
        layers = _layer_spectrum(args.curvature, op, model, loss_fn, data)
        results["layers"] = layers.to_dict()
        plot_layers(
            layer_labels(model, layers.names),
            layers.eigenvalues,
            path=out / "layers.png",
            title=f"{args.curvature}: top eigenvalue per block",
        )
    _write(out, results)
    return results


def _layer_spectrum(kind: str, op, model, loss_fn, data):
    """Per-layer top eigenvalues: Hessian / GGN rebuilt with blocks="layer"; KFAC and EKFAC
    are block-diagonal already (one block per weight and per bias), named by parameter."""
    if kind in ("kfac", "ekfac"):
        layers = curvops.block_top_eigenvalues(op, normalize=True)
        layers.names = block_names(op)
        return layers
    layer_op = build_operator(kind, model, loss_fn, data, blocks="layer")
    return curvops.block_top_eigenvalues(layer_op, normalize=True)


def run_compare(args) -> dict:
    """Exact GGN (or Hessian) vs the requested Kronecker-factored approximations."""
    kinds = [a.strip() for a in args.approx.split(",") if a.strip()]
    if not kinds:
        raise ValueError("--approx needs at least one of kfac, ekfac, ggn-mc, ggn-empirical")
    _check_kinds(kinds)
    model, loss_fn, data, out = _prepare(args)
    exact = build_operator(args.exact, model, loss_fn, data, progress=args.progress)
    approx = {k: build_operator(k, model, loss_fn, data) for k in kinds}
    report = compare(exact, approx, k=args.k, exact_name=args.exact)
    print(report.summary())
    report.plot(out / "comparison.png")
    results = report.to_dict()
    _write(out, results)
    return results


def _eig_dict(res) -> dict:
    return res.to_dict() if hasattr(res, "to_dict") else {"eigenvalues": list(res.eigenvalues)}


__all__ = ["build_operator", "run_compare", "run_spectrum"]
