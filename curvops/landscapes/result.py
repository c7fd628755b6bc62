"""``Landscape``: a 1-D or 2-D slice of the loss, its quadratic model, and the directions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curvops.core.records import encode, same


@dataclass(eq=False)
class Landscape:
    """L(θ₀ + Σ_i t_i d_i) on a grid, d = 1 or 2 directions.

    ``coords``: d arrays (n,), t along each direction, 0 in the middle; ``loss`` and
    ``quadratic``: (n,) or (n, n), the loss and q(t) = L₀ + gᵀD t + ½ tᵀ(DᵀHD) t;
    ``loss0`` L(θ₀); ``slopes`` (d,) gᵀd_i; ``curvatures`` (d, d) DᵀHD; ``rayleigh`` (d,)
    λ_i = d_iᵀHd_i / ‖d_i‖²; ``norms`` (d,) ‖d_i‖; ``kind`` "eigenvector", "random,
    filter-normalised" or "given"; ``names`` one label per direction; ``model`` class name.
    """

    coords: list[np.ndarray]
    loss: np.ndarray
    quadratic: np.ndarray
    loss0: float
    slopes: np.ndarray
    curvatures: np.ndarray
    rayleigh: np.ndarray
    norms: np.ndarray
    kind: str
    names: list[str]
    model: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Landscape) and same(self, other)

    @property
    def ndim(self) -> int:
        return len(self.coords)

    @property
    def gap(self) -> np.ndarray:
        """L − q on the grid: where curvature stops explaining the loss."""
        return self.loss - self.quadratic

    def departure(self, rtol: float = 0.1) -> tuple[float, float]:
        """1-D: the t closest to 0 on each side (t < 0, t > 0) where the quadratic model
        misses the loss by more than ``rtol`` of its curvature term, |L − q| > rtol · ½|dᵀHd| t²
        (where curvature stops explaining the loss); NaN on a side where it never does."""
        if self.ndim != 1:
            raise ValueError("departure is defined for a 1-D landscape")
        t = self.coords[0]
        term = 0.5 * abs(float(self.curvatures[0, 0])) * t**2
        off = np.abs(self.gap) > rtol * term
        left, right = t[(t < 0) & off], t[(t > 0) & off]
        return (
            float(left.max()) if left.size else math.nan,
            float(right.min()) if right.size else math.nan,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as null)."""
        return encode(self)

    def plot(self, path: str | Path | None = None, ax: Any = None) -> Any:
        """``plot_landscape(self, ax, path)``."""
        from curvops.landscapes.figure import plot_landscape

        return plot_landscape(self, ax=ax, path=path)
