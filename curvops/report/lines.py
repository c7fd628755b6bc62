"""One line per part of a report, for a terminal: the start line and each result."""

from __future__ import annotations

from typing import Any

import numpy as np

from curvops.report.summary import num

SHOWN = 5  # eigenvalues / blocks / approximations shown on one line


def start_line(r: Any) -> str:
    """The analysed problem: curvature and loss, P, N, device, dtype, threads."""
    p = r.provenance
    where = f", {p.device}, {p.dtype}, {p.threads} thread{'s' * (p.threads != 1)}" if p else ""
    loss = f" of {p.loss} ({p.reduction})" if p else ""
    return (
        f"{r.model}: {r.curvature_name}{loss}; P = {r.num_params:,} parameters, "
        f"N = {r.num_data:,} data points{where}"
    )


def result_line(r: Any, part: str) -> str:
    """The result of ``part`` ("top", "bottom", "trace", ...) in one line, with its cost."""
    text = _LINES[part](r)
    step = r.provenance.steps.get(part) if r.provenance else None
    products = f"{step.products:,} products, " if step and step.products else ""
    cost = f" [{products}{step.seconds:.1f} s]" if step else ""
    return f"{part}: {text}{cost}"


def _values(values: np.ndarray) -> str:
    shown = ", ".join(num(float(v), 5) for v in values[:SHOWN])
    return shown + (f", ... ({len(values)} in all)" if len(values) > SHOWN else "")


def _pairs(r: Any, which: str) -> str:
    result = getattr(r, which)
    bound = float(np.max(r.bounds(which), initial=0.0))
    missed = int((~result.converged).sum())
    status = "all converged" if not missed else f"{missed} NOT converged"
    return f"λ = {_values(result.eigenvalues)} (± ≤ {bound:.2g}; {status})"


def _trace(r: Any) -> str:
    t = r.trace
    return f"tr A = {num(t.estimate)} ± {num(t.std_error, 2)} (standard error)"


def _density(r: Any) -> str:
    d = r.density
    low, high = float(d.nodes.min()), float(d.nodes.max())
    return f"Ritz values in [{num(low, 4)}, {num(high, 4)}], mean λ = {num(d.mean(), 4)}"


def _layers(r: Any) -> str:
    b = r.layers
    labels = r.layer_labels or list(b.names)
    order = np.argsort(-np.nan_to_num(np.asarray(b.scores, float), nan=-1.0))[:SHOWN]
    shown = ", ".join(f"{labels[i]} {num(float(b.eigenvalues[i]), 4)}" for i in order)
    more = f" (top {SHOWN} of {len(labels)})" if len(labels) > SHOWN else ""
    return f"λ_b {shown}{more}"


def _compare(r: Any) -> str:
    c = r.comparison
    parts = [
        f"{a.name} rel. error {num(a.frobenius_error, 3)}, top-{c.k} overlap {num(a.overlap, 3)}"
        for a in c.approximations
    ]
    return f"exact {c.exact_name} vs " + "; ".join(parts)


def _landscape(r: Any) -> str:
    parts = []
    for cut in r.landscapes:
        edges = [f"{t:+.2g}" for t in cut.departure() if np.isfinite(t)]
        off = (
            f"quadratic model off by > 10 % from t = {' / '.join(edges)}"
            if edges
            else ("quadratic model within 10 % on the whole grid")
        )
        parts.append(f"{cut.names[0].strip('$')}: λ = {num(float(cut.rayleigh[0]), 4)}, {off}")
    return "; ".join(parts)


_LINES = {
    "top": lambda r: _pairs(r, "top"),
    "bottom": lambda r: _pairs(r, "bottom"),
    "trace": _trace,
    "density": _density,
    "layers": _layers,
    "compare": _compare,
    "landscape": _landscape,
}
