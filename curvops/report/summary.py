"""``Report.summary()``: the report as aligned text a person reads."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

UNITS = "loss / parameter²"  # the unit of a curvature eigenvalue
KRYLOV = ("lanczos", "arpack")  # single-vector solvers: one copy of a repeated eigenvalue
_METHODS = {"hutch++": "Hutch++", "hutchinson": "Hutchinson"}


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """Aligned lines; ``align`` one "l" / "r" per column (default: the first left, others right)."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def line(r):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)]
        return "  " + "  ".join(parts).rstrip()

    return [line(r) for r in cells]


def num(x: float, digits: int = 6) -> str:
    """A number in ``digits`` significant digits, "n/a" when undefined."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def summarize(report: Any) -> str:
    """Header, eigenvalues ± bounds, trace, density, layers, comparison, cost and versions."""
    parts = [
        _header(report),
        _pairs(report, "top"),
        _pairs(report, "bottom"),
        _trace(report),
        _density(report),
        _layers(report),
        _comparison(report),
        _cost(report),
    ]
    return "\n\n".join(p for p in parts if p)


def _header(r: Any) -> str:
    p = r.provenance
    loss = f" of {p.loss} ({p.reduction})" if p else ""
    lines = [
        f"curvops report: {r.model}, {r.curvature_name}{loss}",
        f"  N = {r.num_data:,} data points, P = {r.num_params:,} parameters"
        + (f", {p.dtype} on {p.device}, {_threads(p.threads)}" if p else ""),
    ]
    if r.top is not None or r.bottom is not None:
        lines += [
            f"  eigenvalues by eigsh, tol = {r.tol:.1g}{_asked(r)}; ‖A‖ ≈ max |λ| = "
            f"{num(r.norm_estimate, 4)}",
            f"  bound = max(tol·‖A‖, ‖Av − λv‖), tol·‖A‖ = {r.tolerance_bound:.2g}: an "
            "eigenvalue of A lies within it of λ",
        ]
    return "\n".join(lines)


def _asked(r: Any) -> str:
    """Where the float floor raised the tolerance: what was asked for."""
    asked = r.provenance.settings.get("tol") if r.provenance else None
    if asked is None or asked == r.tol:
        return ""
    return f" (asked {asked:g}; floor 50 eps of {r.provenance.dtype})"


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _pairs(r: Any, which: str) -> str:
    result = getattr(r, which)
    if result is None:
        return ""
    bounds, k = r.bounds(which), len(result.eigenvalues)
    index = [str(i + 1) for i in range(k)] if which == "top" else _bottom_index(k)
    columns = zip(index, result.eigenvalues, bounds, result.residual_norms, result.converged)
    rows = [
        (i, num(lam), f"± {b:.2g}", f"{res:.2g}", _note(lam, b, ok))
        for i, lam, b, res, ok in columns
    ]
    title = f"{'Top' if which == 'top' else 'Bottom'}-{k} eigenvalues ({UNITS}; {result.backend})"
    lines = [title, *table(("i", "λ_i", "bound", "residual", ""), rows, "lrrrl")]
    if which == "bottom" and result.backend in KRYLOV:
        lines.append(
            f"  ({result.backend} finds a repeated eigenvalue once: copies may be missing)"
        )
    return "\n".join(lines)


def _note(lam: float, bound: float, converged: bool) -> str:
    if not converged:
        return "not converged"
    return "|λ| ≤ bound: indistinguishable from 0" if abs(lam) <= bound else ""


def _bottom_index(k: int) -> list[str]:
    """Row names P-2, P-1, P of the k smallest (descending order)."""
    return [f"P-{j}" if j else "P" for j in range(k - 1, -1, -1)]


def _trace(r: Any) -> str:
    t = r.trace
    if t is None:
        return ""
    per = t.estimate / r.num_params
    return "\n".join(
        [
            f"Trace ({_METHODS.get(t.method, t.method)}, {t.n_matvecs} products)",
            f"  tr A = {num(t.estimate)} ± {num(t.std_error, 2)} (standard error)   "
            f"tr A / P = {num(per, 4)} ({UNITS})",
        ]
    )


def _density(r: Any) -> str:
    d = r.density
    if d is None:
        return ""
    probes, steps = d.nodes.shape
    line = (
        f"  Ritz values span [{num(float(d.nodes.min()), 4)}, {num(float(d.nodes.max()), 4)}];"
        f" mean ∫λρ(λ)dλ = {num(d.mean(), 4)} (its {probes} probes' estimate of tr A / P)"
    )
    title = f"Spectral density (SLQ: {probes} probes × {steps} Lanczos steps, σ = {d.sigma:.2g})"
    return "\n".join([title, line])


def _layers(r: Any) -> str:
    b = r.layers
    if b is None:
        return ""
    labels = r.layer_labels or list(b.names)
    rows = [
        (label, f"{size:,}", num(lam), _fixed(score), _bar(score), "" if st == "ok" else st)
        for label, size, lam, score, st in zip(labels, b.sizes, b.eigenvalues, b.scores, b.statuses)
    ]
    title = "Layers: top eigenvalue λ_b of each diagonal block, score |λ_b| / max_c |λ_c|"
    return "\n".join([title, *table(("block", "size", "λ_b", "score", "", ""), rows, "lrrrll")])


def _fixed(score: float) -> str:
    return f"{score:.3f}" if np.isfinite(score) else "n/a"


def _bar(score: float, width: int = 20) -> str:
    return "█" * round(width * score) if np.isfinite(score) else ""


def _comparison(r: Any) -> str:
    c = r.comparison
    if c is None:
        return ""
    names = ", ".join(a.name for a in c.approximations)
    return f"Exact {c.exact_name} vs {names} (compare)\n" + textwrap.indent(c.summary(), "  ")


def _cost(r: Any) -> str:
    p = r.provenance
    if p is None or not p.steps:
        return ""
    rows = [(name, f"{s.products:,}", f"{s.seconds:.2f}") for name, s in p.steps.items()]
    rows.append(("total", f"{p.total_products:,}", f"{p.total_seconds:.2f}"))
    v = p.versions
    versions = ", ".join(f"{k} {v[k]}" for k in v)
    title = "Cost (columns multiplied by the exact operators, wall seconds)"
    return "\n".join([title, *table(("step", "products", "s"), rows), "  " + versions])
