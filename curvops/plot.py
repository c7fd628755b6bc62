"""matplotlib figures: spectrum, spectral density, per-layer bars, comparison (extra "plot")."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PathArg = str | os.PathLike[str] | None


def layer_labels(model: Any, names: Sequence[str]) -> list[str]:
    """Module names with their type, e.g. "0" -> "0 Linear", for figure labels."""
    modules = dict(model.named_modules())
    return [f"{n} {type(modules[n]).__name__}" if n in modules else n for n in names]


def subplots(ncols: int, size: tuple[float, float] = (6, 4)) -> tuple[Figure, list[Axes]]:
    """A figure with ``ncols`` axes side by side, each ``size`` inches: (fig, [axes])."""
    fig, axes = _plt().subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=False)
    return fig, list(axes[0])


def save(fig: Figure, path: PathArg) -> Figure:
    """Write ``fig`` to ``path`` (folders created) and close it; returns the figure."""
    return _finish(fig, path)


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'curvops[plot]'") from err
    return plt


def _finish(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130, bbox_inches="tight")
        _plt().close(fig)
    return fig


def _axes(ax, size=(6, 4)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = _plt().subplots(figsize=size)
    return fig, ax


def plot_spectrum(
    spectra: Any, ax: Axes | None = None, path: PathArg = None, title: str = "Top eigenvalues"
) -> Figure:
    """Eigenvalue index vs value; ``spectra``: an array, an EigenResult, or a dict name -> either."""
    fig, ax = _axes(ax)
    items = spectra.items() if isinstance(spectra, Mapping) else [("", spectra)]
    for (name, values), marker in zip(items, "osD^vx*"):
        values = np.asarray(getattr(values, "eigenvalues", values))
        ax.plot(np.arange(1, len(values) + 1), values, marker=marker, ls="-", label=name or None)
    _scale_for(ax, [np.asarray(getattr(v, "eigenvalues", v)) for _, v in items])
    ax.xaxis.set_major_locator(_plt().MaxNLocator(integer=True))
    ax.set(xlabel=r"index $i$", ylabel=r"eigenvalue $\lambda_i$", title=title)
    if isinstance(spectra, Mapping):
        ax.legend()
    return _finish(fig, path)


def _scale_for(ax, arrays) -> None:
    """Log scale for positive spectra spanning decades, symlog when signs mix, else linear."""
    values = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    if values.size == 0:
        return
    top = np.abs(values).max()
    if (values < 0).any():
        ax.axhline(0, color="0.6", lw=0.8)
        if top > 100 * max(np.abs(values[values != 0]).min(initial=top), 1e-300):
            ax.set_yscale("symlog", linthresh=top * 1e-3)
    elif values.min() > 0 and top / values.min() > 100:
        ax.set_yscale("log")


def plot_density(
    density: Any,
    ax: Axes | None = None,
    path: PathArg = None,
    log: bool = False,
    title: str = "Spectral density (SLQ)",
) -> Figure:
    """The density ρ(λ) on its grid; ``log=True`` for a log-scaled density axis."""
    fig, ax = _axes(ax)
    grid, rho = np.asarray(density.grid), np.asarray(density.density)
    ax.plot(grid, rho, color="C0")
    ax.fill_between(grid, rho, alpha=0.25, color="C0")
    if log:
        ax.set_yscale("log")
        if (rho > 0).any():  # the fill's zero baseline would stretch the axis to 1e-300
            ax.set_ylim(max(rho[rho > 0].min(), rho.max() * 1e-8), rho.max() * 3)
    ylabel = r"density $\rho(\lambda)$" + (" (log)" if log else "")
    ax.set(xlabel=r"eigenvalue $\lambda$", ylabel=ylabel, title=title)
    return _finish(fig, path)


def plot_layers(
    names: Sequence[str],
    values: Sequence[float] | np.ndarray,
    ax: Axes | None = None,
    path: PathArg = None,
    title: str = "Per-layer top eigenvalue",
    ylabel: str = r"$\lambda_{\max}$ of the layer block",
) -> Figure:
    """Bars per layer; non-finite values are drawn as hatched empty bars, labelled."""
    fig, ax = _axes(ax, size=(max(6, 0.6 * len(names)), 4))
    heights = np.asarray(values, dtype=float)
    finite = np.isfinite(heights)
    x = np.arange(len(names))
    ax.bar(x[finite], heights[finite], color="C1")
    for i in x[~finite]:
        ax.bar(i, 0, hatch="//", edgecolor="C3", fill=False)
        ax.annotate("n/a", (i, 0), ha="center", va="bottom", color="C3")
    _tick_labels(ax, x, names)
    ax.set(ylabel=ylabel, title=title)
    return _finish(fig, path)


def _tick_labels(ax, x, names) -> None:
    """Horizontal labels when short, slanted when long."""
    if max((len(str(n)) for n in names), default=0) <= 8:
        ax.set_xticks(x, names)
    else:
        ax.set_xticks(x, names, rotation=30, ha="right")


def plot_comparison(comparison: Any, path: PathArg = None, title: str | None = None) -> Figure:
    """Spectra overlaid, per-block relative errors, principal-angle cosines, and (when the
    approximations report block structures, as KFAC / EKFAC do) the errors per structure.
    ``title`` (e.g. the model's name) heads the line that defines the symbols."""
    plt = _plt()
    by_structure = any(a.structure_errors for a in comparison.approximations)
    if by_structure:  # four panels on a 2 x 2 page: the per-block labels get a full width
        fig, grid = plt.subplots(2, 2, figsize=(14, 10), squeeze=False)
        axes = [grid[0, 0], grid[0, 1], grid[1, 0], grid[1, 1]]
    else:
        fig, row = plt.subplots(1, 3, figsize=(16.2, 4.6), squeeze=False)
        axes = list(row[0])
    spectra = {comparison.exact_name: comparison.exact_eigenvalues}
    spectra.update({a.name: a.eigenvalues for a in comparison.approximations})
    plot_spectrum(spectra, ax=axes[0], title=f"Top-{comparison.k} eigenvalues")
    _block_errors(comparison, axes[1])
    for a in comparison.approximations:
        axes[2].plot(
            np.arange(1, len(a.cosines) + 1),
            a.cosines,
            marker="o",
            label=f"{a.name} (overlap {a.overlap:.2f})",
        )
    axes[2].set(
        xlabel=r"principal angle index $i$",
        ylabel=r"$\cos\theta_i$",
        ylim=(-0.02, 1.02),
        title=f"Top-{comparison.k} eigenspaces: principal angles",
    )
    axes[2].xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[2].legend()
    if by_structure:
        _structure_errors(comparison, axes[3])
    fig.suptitle(_symbols(comparison, title, by_structure), fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def _symbols(comparison, title=None, by_structure=False) -> str:
    """The figure's heading: what A, B, λ_i, A_bb, A_S and θ_i stand for."""
    head = f"{title}: " if title else ""
    structure = r"; $A_S$: its blocks of one structure" if by_structure else ""
    return (
        f"{head}$A$ = exact {comparison.exact_name}, $B$ = each approximation; "
        r"$\lambda_i$: $i$-th largest eigenvalue; $A_{bb}$: the block of parameter $b$"
        f"{structure}; "
        rf"$\theta_i$: principal angles between the top-{comparison.k} eigenspaces of $A$ and $B$"
    )


def _structure_errors(comparison, ax):
    """Grouped bars: per block structure, each approximation's relative error over its
    blocks (their count below the name); an undefined one (zero exact blocks) is hatched."""
    reports = comparison.approximations
    structures = sorted({s for a in reports for s in a.structure_errors})
    counts = {s: sum(v == s for v in reports[0].block_structures.values()) for s in structures}
    width = 0.8 / len(reports)
    x = np.arange(len(structures))
    for i, a in enumerate(reports):
        errors = np.array([a.structure_errors.get(s, np.nan) for s in structures], dtype=float)
        ax.bar(x + i * width, np.where(np.isfinite(errors), errors, 0.0), width, label=a.name)
        for j in np.flatnonzero(np.isfinite(errors)):
            label = "0" if errors[j] < 1e-6 else f"{errors[j]:.2f}"
            ax.annotate(label, (x[j] + i * width, errors[j]), ha="center", va="bottom", fontsize=8)
        for j in np.flatnonzero(~np.isfinite(errors)):
            ax.bar(x[j] + i * width, 0.05, width, fill=False, hatch="//", edgecolor="0.6")
    labels = [f"{s}\n({counts[s]} block{'s' * (counts[s] != 1)})" for s in structures]
    ax.set_xticks(x + 0.4 - width / 2, labels)
    finite = [e for a in reports for e in a.structure_errors.values() if np.isfinite(e)]
    ax.set_ylim(0, 1.35 * max(finite, default=0.0) or 1.0)  # room for the labels and legend
    ax.set(
        ylabel=r"$\|A_S - B_S\|_F \,/\, \|A_S\|_F$",
        title="Relative error per block structure",
    )
    ax.legend(loc="upper right", fontsize=8)


def _block_errors(comparison, ax):
    """Bars of the per-block relative errors; a zero exact block is a labelled, hatched slot."""
    reports = comparison.approximations
    blocks = list(reports[0].block_errors) if reports and reports[0].block_errors else []
    if not blocks:
        names = [a.name for a in reports]
        ax.bar(names, [a.frobenius_error for a in reports], color="C2")
        ax.set(ylabel=r"$\|A - B\|_F \,/\, \|A\|_F$", title="Relative Frobenius error")
        return
    width = 0.8 / len(reports)
    x = np.arange(len(blocks))
    for i, a in enumerate(reports):
        errors = np.array([a.block_errors[b] for b in blocks], dtype=float)
        shown = np.where(np.isfinite(errors), errors, 0.0)
        ax.bar(x + i * width, shown, width, label=f"{a.name} (all: {a.frobenius_error:.2f})")
        for j in np.flatnonzero(np.isfinite(errors) & (errors < 1e-6)):  # exact: say so
            ax.annotate("0", (x[j] + i * width, 0), ha="center", va="bottom", fontsize=8)
    finite = [e for a in reports for e in a.block_errors.values() if np.isfinite(e)]
    top = 1.3 * max(finite, default=0.0) or 1.0
    for pos, b in zip(x, blocks):
        if not np.isfinite(reports[0].block_errors[b]):
            _zero_block(ax, pos - width / 2, 0.8, top)
    _tick_labels(ax, x + 0.4 - width / 2, blocks)
    ax.set(ylabel=r"$\|A_{bb} - B_{bb}\|_F \,/\, \|A_{bb}\|_F$", title="Relative error per block")
    ax.set_ylim(0, top)
    ax.legend(loc="upper left")


def _zero_block(ax, left: float, width: float, top: float) -> None:
    """A hatched slot saying the exact block is zero (its relative error is undefined)."""
    ax.bar(left, top, width, align="edge", fill=False, hatch="//", edgecolor="0.7", lw=0)
    ax.text(
        left + width / 2, top / 2, "zero exact block\nrel. error undefined",
        rotation=90, ha="center", va="center", fontsize=8, color="0.35",
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5},
    )  # fmt: skip
