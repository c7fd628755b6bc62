"""``plot_landscape``: the loss slice with its quadratic model overlaid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from curvops import plot

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def plot_landscape(result: Any, ax: Axes | None = None, path: str | Path | None = None) -> Figure:
    """1-D: L(t) and q(t) against t; 2-D: contours of L (filled) and q (dashed lines)."""
    if ax is None:
        fig, axes = plot.subplots(1, size=(5.5, 4.2))
        ax = axes[0]
    else:
        fig = cast("Figure", ax.figure)
    (_one if result.ndim == 1 else _two)(result, ax)
    return plot.save(fig, path)


def plot_slices(
    slices: Sequence[Any], path: str | Path | None = None, title: str | None = None
) -> Figure:
    """1-D landscapes side by side (one panel per direction, e.g. v_1, v_2, v_3), each with
    its quadratic model; ``title`` above them (default: the model's name)."""
    if not slices:
        raise ValueError("no landscape to draw")
    fig, axes = plot.subplots(len(slices), size=(4.8, 3.9))
    for ax, r in zip(axes, slices):
        _one(r, ax)
        ax.set_title(rf"along {r.names[0]}: $\lambda$ = {r.rayleigh[0]:.4g}", fontsize=10)
    fig.suptitle(title or f"{slices[0].model}: loss along {len(slices)} directions", fontsize=11)
    fig.tight_layout()
    return plot.save(fig, path)


def _one(r: Any, ax) -> None:
    t, name = r.coords[0], r.names[0]
    unit = abs(float(r.norms[0]) - 1) < 1e-6
    scale = "" if unit else r"\|d\|^2"
    ax.plot(t, r.loss, color="C0", lw=2, label=rf"loss $L(\theta_0 + t\,d)$, $d$ = {name}")
    ax.plot(
        t,
        r.quadratic,
        color="C3",
        ls="--",
        label=rf"quadratic $L_0 + g^\top d\,t + \frac{{1}}{{2}}\lambda{scale}\,t^2$",
    )
    edges = [e for e in r.departure(0.1) if np.isfinite(e)]
    for i, edge in enumerate(edges):
        label = None if i else r"$|L - q| > 10\%$ of $\frac{1}{2}\lambda t^2$"
        ax.axvline(edge, color="0.4", ls=":", lw=1, label=label)
    low = min(float(r.loss.min()), float(r.quadratic.min()))
    high = float(r.loss.max())
    ax.set_ylim(low - 0.05 * (high - low), high + 0.3 * (high - low))  # q may leave the top
    ax.set(
        xlabel=f"$t$ along {name}",
        ylabel=r"whole-data loss $L$",
        title=f"{r.model}: loss along {name} ({r.kind}, $\\lambda$ = {r.rayleigh[0]:.4g})",
    )
    ax.legend(fontsize=8, loc="upper center")


def _two(r: Any, ax) -> None:
    a, b = r.coords
    levels = np.linspace(float(r.loss.min()), float(np.percentile(r.loss, 95)), 15)
    filled = ax.contourf(a, b, r.loss.T, levels=levels, cmap="viridis", extend="max")
    ax.contour(a, b, r.quadratic.T, levels=levels, colors="w", linestyles="--", linewidths=0.8)
    ax.figure.colorbar(filled, ax=ax, label="whole-data loss (dashed: quadratic model)")
    ax.plot([0], [0], marker="*", color="w", ms=10)
    ax.set(
        xlabel=f"$t_1$ along {r.names[0]}",
        ylabel=f"$t_2$ along {r.names[1]}",
        title=f"{r.model}: loss on a plane ({r.kind})",
    )
