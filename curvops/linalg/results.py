"""Result records of the spectral algorithms: small dataclasses with a JSON-ready ``to_dict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(x):
    """numpy arrays / scalars -> lists / floats / bools (NaN stays NaN: ``json`` writes it)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


@dataclass
class EigenResult:
    """Eigenpairs of a symmetric operator.

    ``eigenvalues`` (k,) descending; ``eigenvectors`` (P, k) orthonormal columns;
    ``residual_norms`` (k,) = ‖A v_i − λ_i v_i‖ (recomputed with one final matmat);
    ``converged`` (k,) bool; ``n_matvecs`` products used (columns); ``seconds`` wall time;
    ``backend`` and ``which`` as requested.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residual_norms: np.ndarray
    converged: np.ndarray
    n_matvecs: int
    seconds: float
    backend: str
    which: str

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    def to_dict(self, vectors: bool = False) -> dict:
        """JSON-ready dict; the (P, k) eigenvectors only with ``vectors=True``."""
        out = {
            "eigenvalues": _jsonable(self.eigenvalues),
            "residual_norms": _jsonable(self.residual_norms),
            "converged": _jsonable(self.converged),
            "all_converged": self.all_converged,
            "n_matvecs": int(self.n_matvecs),
            "seconds": float(self.seconds),
            "backend": self.backend,
            "which": self.which,
        }
        if vectors:
            out["eigenvectors"] = _jsonable(self.eigenvectors)
        return out


@dataclass
class PowerResult(EigenResult):
    """``EigenResult`` of deflated power iteration, plus the near-tie diagnosis.

    ``near_tie`` (k,) bool: the pair could not be separated from another one of (nearly)
    the same magnitude (a ± pair or a near tie); ``ratios`` (k,) the observed convergence
    ratio per iteration (close to 1: slow); ``tie_values`` (k, 2) the two competing values
    (NaN where no tie); ``momentum`` β.
    """

    near_tie: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    ratios: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tie_values: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    momentum: float = 0.0

    @property
    def any_near_tie(self) -> bool:
        return bool(np.any(self.near_tie))

    def to_dict(self, vectors: bool = False) -> dict:
        out = super().to_dict(vectors)
        out.update(
            near_tie=_jsonable(self.near_tie),
            ratios=_jsonable(self.ratios),
            tie_values=_jsonable(self.tie_values),
            momentum=float(self.momentum),
        )
        return out


@dataclass
class BlockEigenvalues:
    """Per-block (layer-wise) spectra of a block-diagonal operator.

    Per block b: ``names[b]``; ``eigenvalues[b]`` the top (largest algebraic) eigenvalue
    λ_b with its sign; ``largest_magnitude[b]`` the eigenvalue of largest |λ|, with its
    sign; ``scores[b]`` = |λ_b| / max_c |λ_c| when ``normalized`` (else |λ_b|), NaN unless
    ``statuses[b] == "ok"``; ``statuses[b]`` in "ok" | "zero" | "non-finite";
    ``converged[b]``; ``sizes[b]`` the block's number of parameters.
    """

    names: list[str]
    eigenvalues: np.ndarray
    largest_magnitude: np.ndarray
    scores: np.ndarray
    statuses: list[str]
    converged: np.ndarray
    sizes: list[int]
    normalized: bool
    n_matvecs: int
    seconds: float

    def __len__(self) -> int:
        return len(self.names)

    def rows(self) -> list[dict]:
        """One JSON-ready dict per block."""
        keys = ("eigenvalues", "largest_magnitude", "scores", "converged")
        cols = {k: _jsonable(getattr(self, k)) for k in keys}
        return [
            {
                "name": name,
                "eigenvalue": cols["eigenvalues"][i],
                "largest_magnitude": cols["largest_magnitude"][i],
                "score": cols["scores"][i],
                "status": self.statuses[i],
                "converged": cols["converged"][i],
                "size": int(self.sizes[i]),
            }
            for i, name in enumerate(self.names)
        ]

    def to_dict(self) -> dict:
        return {
            "blocks": self.rows(),
            "names": list(self.names),
            "eigenvalues": _jsonable(self.eigenvalues),
            "scores": _jsonable(self.scores),
            "statuses": list(self.statuses),
            "normalized": bool(self.normalized),
            "n_matvecs": int(self.n_matvecs),
            "seconds": float(self.seconds),
        }


@dataclass
class TraceEstimate:
    """A stochastic trace estimate: ``estimate`` ± ``std_error`` after ``n_matvecs`` products."""

    estimate: float
    std_error: float
    n_matvecs: int
    method: str = "hutchinson"

    def to_dict(self) -> dict:
        return {
            "estimate": float(self.estimate),
            "std_error": float(self.std_error),
            "n_matvecs": int(self.n_matvecs),
            "method": self.method,
        }


@dataclass
class DiagonalEstimate:
    """Hutchinson diagonal: ``diagonal`` (P,) and its per-entry ``std_error`` (P,)."""

    diagonal: np.ndarray
    std_error: np.ndarray
    n_matvecs: int

    def to_dict(self) -> dict:
        return {
            "diagonal": _jsonable(self.diagonal),
            "std_error": _jsonable(self.std_error),
            "n_matvecs": int(self.n_matvecs),
        }


@dataclass
class Density:
    """Spectral density by stochastic Lanczos quadrature.

    ``grid`` (n_grid,); ``density`` (n_grid,) with ∫ density = 1 (trapezoid);
    ``nodes``, ``weights`` (n_probes, steps): Ritz values and squared first components
    of each probe's Lanczos eigenvectors (each row of weights sums to 1); ``sigma`` the
    Gaussian width; ``n_matvecs``.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    n_matvecs: int

    def mean(self) -> float:
        """∫ t ρ(t) dt of the quadrature (= the Hutchinson estimate of tr(A) / P)."""
        return float((self.nodes * self.weights).sum() / self.nodes.shape[0])

    def to_dict(self) -> dict:
        return {
            "grid": _jsonable(self.grid),
            "density": _jsonable(self.density),
            "nodes": _jsonable(self.nodes),
            "weights": _jsonable(self.weights),
            "sigma": float(self.sigma),
            "n_matvecs": int(self.n_matvecs),
        }

    def plot(self, path: str | Path | None = None, ax: Any = None, log: bool = False) -> Any:
        """Draw ρ(λ) (on ``ax`` or a new figure, saved to ``path`` if given); returns the figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("Density.plot needs matplotlib: pip install curvops[plot]") from err
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
        ax.plot(self.grid, self.density)
        ax.fill_between(self.grid, self.density, alpha=0.25)
        if log:
            positive = self.density[self.density > 0]
            ax.set_yscale("log")
            if positive.size:
                ax.set_ylim(bottom=max(positive.min(), positive.max() * 1e-8))
        ax.set(xlabel="eigenvalue λ", ylabel="density", title="Spectral density (SLQ)")
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=130, bbox_inches="tight")
        return fig
