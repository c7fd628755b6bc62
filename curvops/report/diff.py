"""``diff_reports``: two reports side by side (two checkpoints, two settings, two machines)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curvops.core.records import encode
from curvops.linalg.results import BlockEigenvalues
from curvops.report.report import Report
from curvops.report.summary import num, table

NUMERIC = ("top", "bottom", "trace", "density", "layers", "compare")


@dataclass
class DiffRow:
    """One quantity in both reports: ``change`` = (b − a) / |a| (0 when equal, ±inf from a
    zero a, NaN when not numeric); ``significant``: the change exceeds the two reports'
    combined accuracy (eigenvalues: b_a + b_b; trace: 3 √(se_a² + se_b²)), None when unknown."""

    section: str
    name: str
    a: Any
    b: Any
    change: float = math.nan
    significant: bool | None = None
    accuracy: str = "the bounds"  # what ``significant`` compares with, for the table


@dataclass
class ReportDiff:
    """The rows of a diff; ``str(diff)`` / ``diff.table()`` is the readable table."""

    labels: tuple[str, str]
    rows: list[DiffRow] = field(default_factory=list)

    def section(self, name: str) -> list[DiffRow]:
        """The rows of one section: "model", "top", "bottom", "trace", "density", "layers",
        "compare", "settings", "versions"."""
        return [r for r in self.rows if r.section == name]

    def changes(self, section: str) -> np.ndarray:
        """The relative changes of a numeric section, (n,)."""
        return np.array([r.change for r in self.section(section)], dtype=float)

    @property
    def differing_settings(self) -> dict[str, tuple[Any, Any]]:
        return {r.name: (r.a, r.b) for r in self.section("settings")}

    def to_dict(self) -> dict[str, Any]:
        return encode({"labels": list(self.labels), "rows": self.rows})

    def table(self) -> str:
        out = []
        for section in ("model", *NUMERIC, "settings", "versions"):
            rows = self.section(section)
            if rows:
                header = (section, *self.labels, "change", "")
                out += ["", *table(header, [_cells(r) for r in rows], "lrrrl")]
        if not any(self.section(s) for s in ("model", "settings", "versions")):
            out += ["", "  same model, data size, settings and versions"]
        return "\n".join(out).strip("\n")

    def __str__(self) -> str:
        return self.table()


def _cells(r: DiffRow) -> tuple[str, ...]:
    note = "" if r.significant is None else ("beyond " if r.significant else "within ") + r.accuracy
    change = "" if math.isnan(r.change) else "0" if r.change == 0 else f"{r.change:+.3%}"
    return (r.name, _show(r.a), _show(r.b), change, note)


def _show(x: Any) -> str:
    numeric = isinstance(x, (float, int, np.floating)) and not isinstance(x, bool)
    return num(float(x)) if numeric else str(x)


def diff_reports(a: Report, b: Report, labels: tuple[str, str] = ("a", "b")) -> ReportDiff:
    """``a`` and ``b`` side by side: eigenvalues (with whether a change exceeds the bounds),
    trace (against the standard errors), density mean, layer λ_b and scores, comparison
    errors and overlaps, and every model property, setting and version that differs."""
    diff = ReportDiff(labels=(str(labels[0]), str(labels[1])))
    diff.rows += _model_rows(a, b)
    for which in ("top", "bottom"):
        diff.rows += _eigen_rows(a, b, which)
    diff.rows += _trace_rows(a, b) + _density_rows(a, b) + _layer_rows(a, b) + _compare_rows(a, b)
    diff.rows += _dict_rows("settings", *(_prov(r, "settings") for r in (a, b)))
    diff.rows += _dict_rows("versions", *(_machine(r) for r in (a, b)))
    return diff


def relative_change(a: float, b: float) -> float:
    """(b − a) / |a|; 0 when a == b, ±inf when only a is 0, NaN when either is NaN."""
    if a == b:
        return 0.0
    if a == 0:
        return math.copysign(math.inf, b)
    return (b - a) / abs(a)


def _number_row(section, name, a, b, tolerance=None, accuracy="the bounds") -> DiffRow:
    """A numeric row; ``significant`` when |b − a| exceeds ``tolerance`` (if known)."""
    a, b = float(a), float(b)
    significant = None if tolerance is None or math.isnan(tolerance) else abs(b - a) > tolerance
    return DiffRow(section, name, a, b, relative_change(a, b), significant, accuracy)


def _model_rows(a: Report, b: Report) -> list[DiffRow]:
    keys = ("model", "curvature", "num_params", "num_data")
    return [
        DiffRow("model", k, getattr(a, k), getattr(b, k))
        for k in keys
        if getattr(a, k) != getattr(b, k)
    ]


def _eigen_rows(a: Report, b: Report, which: str) -> list[DiffRow]:
    """The first k (top) or last k (bottom) eigenvalues of each, k the smaller count."""
    ra, rb = getattr(a, which), getattr(b, which)
    if ra is None or rb is None:
        return []
    k = min(len(ra.eigenvalues), len(rb.eigenvalues))
    pick = slice(0, k) if which == "top" else slice(-k, None)
    tolerance = a.bounds(which)[pick] + b.bounds(which)[pick]
    names = [f"λ_{i + 1}" for i in range(k)] if which == "top" else _bottom_names(k)
    values = zip(names, ra.eigenvalues[pick], rb.eigenvalues[pick], tolerance)
    return [_number_row(which, n, x, y, t) for n, x, y, t in values]


def _bottom_names(k: int) -> list[str]:
    return [f"λ_P-{j}" if j else "λ_P" for j in range(k - 1, -1, -1)]


def _trace_rows(a: Report, b: Report) -> list[DiffRow]:
    if a.trace is None or b.trace is None:
        return []
    se = 3 * math.hypot(a.trace.std_error, b.trace.std_error)
    return [_number_row("trace", "tr A", a.trace.estimate, b.trace.estimate, se, "3 s.e.")]


def _density_rows(a: Report, b: Report) -> list[DiffRow]:
    if a.density is None or b.density is None:
        return []
    return [_number_row("density", "mean ∫λρ", a.density.mean(), b.density.mean())]


def _layer_rows(a: Report, b: Report) -> list[DiffRow]:
    if a.layers is None or b.layers is None:
        return []
    la, lb = (_per_block(x) for x in (a.layers, b.layers))
    labels = dict(zip(a.layers.names, a.layer_labels or a.layers.names))
    rows = []
    for name in (n for n in la if n in lb):
        rows.append(_number_row("layers", f"{labels[name]}: λ_b", la[name][0], lb[name][0]))
        rows.append(_number_row("layers", f"{labels[name]}: score", la[name][1], lb[name][1]))
    return rows


def _per_block(layers: BlockEigenvalues) -> dict[str, tuple[float, float]]:
    return dict(zip(layers.names, zip(layers.eigenvalues, layers.scores)))


def _compare_rows(a: Report, b: Report) -> list[DiffRow]:
    if a.comparison is None or b.comparison is None:
        return []
    rb = {r.name: r for r in b.comparison.approximations}
    rows = []
    for ra in a.comparison.approximations:
        if ra.name in rb:
            other = rb[ra.name]
            rows.append(
                _number_row(
                    "compare",
                    f"{ra.name}: rel. Frobenius error",
                    ra.frobenius_error,
                    other.frobenius_error,
                )
            )
            rows.append(
                _number_row("compare", f"{ra.name}: top-k overlap", ra.overlap, other.overlap)
            )
    return rows


def _prov(r: Report, key: str) -> dict[str, Any]:
    return dict(getattr(r.provenance, key, {}) or {})


def _machine(r: Report) -> dict[str, Any]:
    p = r.provenance
    if p is None:
        return {}
    return {
        **p.versions,
        "device": p.device,
        "threads": p.threads,
        "dtype": p.dtype,
        "loss": p.loss,
    }


def _dict_rows(section: str, a: dict[str, Any], b: dict[str, Any]) -> list[DiffRow]:
    keys = [*a, *(k for k in b if k not in a)]
    missing = "(not set)"
    return [
        DiffRow(section, k, a.get(k, missing), b.get(k, missing))
        for k in keys
        if a.get(k, missing) != b.get(k, missing)
    ]
