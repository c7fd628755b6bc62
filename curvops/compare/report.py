"""The results of ``compare``: one ``ApproxReport`` per approximation inside a ``Comparison``."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ZERO_BLOCK = "zero exact block"  # the status of a block whose exact curvature is zero


@dataclass
class ApproxReport:
    """One approximation B against the exact A.

    ``block_errors``: per block ‖A_bb − B_bb‖_F / ‖A_bb‖_F, NaN (JSON null) where the exact
    block is zero and the relative error is undefined; ``block_abs_errors``: ‖A_bb − B_bb‖_F;
    ``block_stderrs``: the standard errors of ``block_errors`` (probe route; 0 when dense).
    ``block_structures``: per block, the structure B gives it (KFAC / EKFAC: "kronecker",
    "kronecker-diagonal-A", "exact", "diagonal"; empty for other operators);
    ``structure_errors``: per structure, √(Σ_b ‖A_bb − B_bb‖²) / √(Σ_b ‖A_bb‖²) over its
    blocks (``curvops.compare.structures``).
    ``matched_by``: "parameters" (same tensors, same order), "parameters, reordered" (same
    tensors, B's products permuted into A's order) or "shape" (an operator without params).
    """

    name: str
    frobenius_error: float  # ‖A − B‖_F / ‖A‖_F
    frobenius_stderr: float  # 0 when exact (dense)
    trace: float
    trace_stderr: float
    eigenvalues: np.ndarray  # (k,) descending
    cosines: np.ndarray  # (k,) cosines of the principal angles between top-k eigenspaces
    block_errors: dict[str, float] = field(default_factory=dict)
    block_abs_errors: dict[str, float] = field(default_factory=dict)
    block_stderrs: dict[str, float] = field(default_factory=dict)  # of block_errors; 0: dense
    block_structures: dict[str, str] = field(default_factory=dict)
    structure_errors: dict[str, float] = field(default_factory=dict)
    natural_gradient_cosine: float | None = None  # cos((A+λI)⁻¹g, (B+λI)⁻¹g)
    matched_by: str = "parameters"

    @property
    def overlap(self) -> float:
        """Mean squared cosine of the principal angles: ‖U_Aᵀ U_B‖_F² / k, in [0, 1]."""
        return float(np.mean(self.cosines**2))

    @property
    def principal_angles(self) -> np.ndarray:
        return np.arccos(np.clip(self.cosines, -1.0, 1.0))

    @property
    def block_status(self) -> dict[str, str]:
        """Per block "ok", or "zero exact block" where the relative error is undefined."""
        return {b: ZERO_BLOCK if math.isnan(e) else "ok" for b, e in self.block_errors.items()}


@dataclass
class Comparison:
    """The result of ``compare``: the exact operator's numbers and one report per approximation.

    ``exact_block_norms``: ‖A_bb‖_F per block; ``zero_blocks``: the blocks whose exact
    curvature is zero (‖A_bb‖_F at round-off level of ‖A‖_F), relative errors undefined there;
    ``unresolved_blocks`` (probe route): those whose ‖A_bb‖²_F estimate is within 2 standard
    errors of 0, so neither zero nor measured: their relative errors are NaN too.
    ``cost``: what the comparison took (``curvops.compare.cost``): "products" per operator
    (columns multiplied; "exact" for the exact one), "memory_estimate_mib", and for the
    probe route the probes, columns per product, per-block estimators and the solve.
    """

    exact_name: str
    exact_trace: float
    exact_trace_stderr: float
    exact_eigenvalues: np.ndarray
    approximations: list[ApproxReport]
    method: str  # "dense" or "hutchinson"
    k: int
    damping: float | None
    seconds: float
    exact_block_norms: dict[str, float] = field(default_factory=dict)
    zero_blocks: list[str] = field(default_factory=list)
    unresolved_blocks: list[str] = field(default_factory=list)
    cost: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> ApproxReport:
        for report in self.approximations:
            if report.name == name:
                return report
        raise KeyError(
            f"no approximation named {name!r}; have {[a.name for a in self.approximations]}"
        )

    def to_dict(self) -> dict:
        """JSON-ready: numpy arrays become lists, NaN / inf become None (``allow_nan=False``)."""
        out = asdict(self)
        for report, d in zip(self.approximations, out["approximations"]):
            d["overlap"] = report.overlap
            d["block_status"] = report.block_status
        return jsonable(out)

    def summary(self) -> str:
        """A plain-text table, and a note on blocks whose relative error is undefined."""
        rows = [("", self.exact_name, *[a.name for a in self.approximations]), *self._rows()]
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join([*lines, *self._zero_block_note()]) + (
            f"\n({self.method}, {self.seconds:.1f} s{self._cost_note()})"
        )

    def _cost_note(self) -> str:
        products = self.cost.get("products")
        if not products:
            return ""
        counts = ", ".join(f"{name} {n}" for name, n in products.items())
        return f"; products: {counts}; ~{self.cost.get('memory_estimate_mib', 0):.0f} MiB"

    def _rows(self) -> list[tuple[str, ...]]:
        approx = self.approximations
        errors = [_pm(a.frobenius_error, a.frobenius_stderr) for a in approx]
        traces = [_pm(a.trace, a.trace_stderr) for a in approx]
        rows = [
            ("rel. Frobenius error", "0", *errors),
            ("trace", _pm(self.exact_trace, self.exact_trace_stderr), *traces),
            (f"top-{self.k} overlap", "1", *[f"{a.overlap:.3f}" for a in approx]),
        ]
        cosines = [a.natural_gradient_cosine for a in approx]
        if all(c is not None for c in cosines):
            rows.append(("nat.-grad. cosine", "1", *[f"{c:.3f}" for c in cosines]))
        structures = sorted({s for a in approx for s in a.structure_errors})
        for s in structures:
            cells = [
                f"{a.structure_errors[s]:.4g}" if s in a.structure_errors else "" for a in approx
            ]
            rows.append((f"rel. error, {s} blocks", "0", *cells))
        for i in range(min(self.k, 5)):
            values = [f"{a.eigenvalues[i]:.4g}" for a in approx]
            rows.append((f"λ_{i + 1}", f"{self.exact_eigenvalues[i]:.4g}", *values))
        return rows

    def _zero_block_note(self) -> list[str]:
        return self._unresolved_note() + self._zero_note()

    def _unresolved_note(self) -> list[str]:
        if not self.unresolved_blocks:
            return []
        n = self.cost.get("probes", "the")
        return [
            f"{len(self.unresolved_blocks)} block(s) whose ‖A_bb‖_F the {n} probes do not resolve "
            "(estimate within 2 standard errors of 0): relative error not reported (NaN); "
            "raise n_probes or set block_probes > 0: " + ", ".join(self.unresolved_blocks)
        ]

    def _zero_note(self) -> list[str]:
        if not self.zero_blocks:
            return []
        lines = [
            f"{len(self.zero_blocks)} block(s) with zero exact curvature, relative error "
            "undefined (NaN); absolute error ‖A_bb − B_bb‖_F:"
        ]
        for b in self.zero_blocks:
            errors = ", ".join(f"{a.name} {a.block_abs_errors[b]:.3g}" for a in self.approximations)
            lines.append(f"  {b}: {errors}")
        return lines

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Spectra overlaid, per-block errors and subspace overlap; saved to ``path`` if given."""
        from curvops.plot import plot_comparison

        return plot_comparison(self, path)


def _pm(value: float, stderr: float) -> str:
    return f"{value:.4g}" + (f" ± {stderr:.2g}" if stderr else "")


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy arrays / scalars as Python lists / numbers and NaN, inf as None."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
