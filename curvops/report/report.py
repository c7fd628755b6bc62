"""``Report``: everything ``curvops.analyze`` computed for one model, with its provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curvops.compare.report import Comparison
from curvops.core.records import encode, same
from curvops.landscapes.figure import plot_slices
from curvops.landscapes.result import Landscape
from curvops.linalg.results import BlockEigenvalues, Density, EigenResult, TraceEstimate
from curvops.report import store
from curvops.report.figure import plot_report
from curvops.report.provenance import Provenance
from curvops.report.summary import summarize

CURVATURE_NAMES = {
    "hessian": "Hessian",
    "ggn": "GGN",
    "ggn-mc": "Monte-Carlo Fisher",
    "ggn-empirical": "empirical Fisher",
    "kfac": "KFAC",
    "ekfac": "EKFAC",
}


@dataclass(eq=False)
class Report:
    """The curvature of one model at one point: spectra, trace, density, layers, comparison.

    ``model`` its class name; ``curvature`` the operator's kind ("hessian", "ggn", ...);
    ``num_params`` P; ``num_data`` N; ``tol`` the eigensolver's effective relative
    tolerance. ``top`` (k pairs, which="LA") and ``bottom`` (which="SA") are EigenResults
    (eigenvalues descending; eigenvectors (P, k), or (0, k) when loaded without them);
    ``trace`` by Hutch++; ``density`` by SLQ; ``layers`` per block λ_max and the scores
    |λ_b| / max_c |λ_c|, with ``layer_labels`` for figures; ``comparison`` the exact GGN
    against its approximations; ``landscapes`` 1-D loss slices along v_1, v_2, ... with
    their quadratic models. A part that was not computed is None (landscapes: empty).

    Equality (``==``) is deep: arrays by dtype, shape and value, NaN equal to NaN.
    """

    model: str
    curvature: str
    num_params: int
    num_data: int
    tol: float
    top: EigenResult | None = None
    bottom: EigenResult | None = None
    trace: TraceEstimate | None = None
    density: Density | None = None
    layers: BlockEigenvalues | None = None
    layer_labels: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    landscapes: list[Landscape] = field(default_factory=list)
    provenance: Provenance | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Report) and same(self, other)

    @property
    def curvature_name(self) -> str:
        """ "Hessian", "GGN", "Monte-Carlo Fisher", ..."""
        return CURVATURE_NAMES.get(self.curvature, self.curvature)

    @property
    def norm_estimate(self) -> float:
        """‖A‖ ≈ the largest |λ| found among the top and bottom eigenvalues (NaN: none)."""
        values = [r.eigenvalues for r in (self.top, self.bottom) if r is not None]
        finite = np.concatenate(values) if values else np.zeros(0)
        finite = np.abs(finite[np.isfinite(finite)])
        return float(finite.max()) if finite.size else float("nan")

    @property
    def tolerance_bound(self) -> float:
        """tol · ‖A‖: the accuracy the tolerance allows every computed eigenvalue."""
        return self.tol * self.norm_estimate

    def bounds(self, which: str = "top") -> np.ndarray:
        """(k,) b_i = max(tol · ‖A‖, ‖A v_i − λ_i v_i‖) of the "top" or "bottom" pairs: for a
        symmetric A an eigenvalue lies within the residual of λ_i, and a converged pair's
        residual is at most 2 tol · ‖A‖."""
        result = {"top": self.top, "bottom": self.bottom}[which]
        if result is None:
            return np.zeros(0)
        return np.maximum(self.tolerance_bound, result.residual_norms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no eigenvectors; NaN as null), with the bounds and ‖A‖ for readers."""
        out = encode(self)
        for key in ("top", "bottom"):
            if out[key] is not None:
                out[key].pop("eigenvectors")
                out[key]["bounds"] = encode(self.bounds(key))
        out["norm_estimate"] = encode(self.norm_estimate)
        return {"format": "curvops-report", "format_version": 1, **out}

    def summary(self) -> str:
        """The report as aligned text: eigenvalues ± bounds, trace ± error, layers, cost."""
        return summarize(self)

    def plot(self, path: str | Path | None = None) -> Any:
        """One figure page: spectrum (top and bottom, ± bounds), density, layer scores and
        the comparison when present; written to ``path`` if given. Needs matplotlib."""
        return plot_report(self, path)

    def plot_landscapes(self, path: str | Path | None = None) -> Any:
        """The loss along v_1, v_2, ... (one panel each) with the quadratic models."""
        title = f"{self.model}: loss along the top {self.curvature_name} eigenvectors"
        return plot_slices(self.landscapes, path, title)

    def save(self, directory: str | Path, vectors: bool = True, figure: bool = True) -> Path:
        """Write ``directory``/report.json, the eigenvectors to eigenvectors.npz (when
        ``vectors``) and the figures to report.png and, with landscapes, landscape.png (when
        ``figure``); returns the folder."""
        return store.save(self, Path(directory), vectors, figure)

    @classmethod
    def load(cls, directory: str | Path) -> Report:
        """The report saved in ``directory`` (eigenvectors (0, k) when none were saved)."""
        return store.load(cls, Path(directory))
