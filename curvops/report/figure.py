"""``Report.plot()``: one figure page, a panel per part (spectrum, density, layers,
comparison); each panel also on its own (``plot_panel``), for the CLI and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from curvops import plot

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL_SIZE = (4.6, 3.6)  # inches per panel
PAIRS = ("top", "bottom")


def plot_report(report: Any, path: str | Path | None = None) -> Figure:
    """The report's figure: (a) the extreme eigenvalues with their bounds, (b) the spectral
    density, (c) the layer scores, (d) the comparison; the panels of the parts present."""
    panels = [name for name in PANELS if _has(report, name)]
    if not panels:
        raise ValueError("the report holds no part to draw")
    fig, axes = _page(len(panels))
    for letter, ax, name in zip("abcd", axes, panels):
        PANELS[name](report, ax)
        title = ax.get_title()
        ax.set_title("")
        ax.set_title(f"({letter}) {title}", loc="left", fontsize=10)
    fig.suptitle(title_of(report), fontsize=11)
    fig.tight_layout()
    return plot.save(fig, path)


def plot_panel(
    report: Any, name: str, ax: Axes | None = None, path: str | Path | None = None
) -> Figure:
    """One panel ("spectrum", "density", "layers" or "comparison") of the report, titled
    with the model and the curvature (its own figure unless ``ax`` is given)."""
    if not _has(report, name):
        raise ValueError(f"the report has no {name} to draw")
    fig = None
    if ax is None:
        fig, axes = plot.subplots(1, size=(5.6, 4.2))
        ax = axes[0]
    PANELS[name](report, ax)
    title = ax.get_title()
    ax.set_title(f"{report.model}: {report.curvature_name}, {title[:1].lower()}{title[1:]}")
    if fig is None:
        return cast("Figure", ax.figure)
    fig.tight_layout()
    return plot.save(fig, path)


def _has(report: Any, name: str) -> bool:
    if name == "spectrum":
        return report.top is not None or report.bottom is not None
    return getattr(report, name) is not None


def _page(n: int):
    """n panels: a row of n, or 2 x 2 for four."""
    if n < 4:
        return plot.subplots(n, size=PANEL_SIZE)
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'curvops[plot]'") from err
    fig, axes = plt.subplots(2, 2, figsize=(2 * PANEL_SIZE[0], 2 * PANEL_SIZE[1]))
    return fig, list(axes.ravel())


def title_of(r: Any) -> str:
    """ "MLP: Hessian of CrossEntropyLoss  (N = 1,400, P = 3,466)"."""
    loss = f" of {r.provenance.loss}" if r.provenance else ""
    return f"{r.model}: {r.curvature_name}{loss}  (N = {r.num_data:,}, P = {r.num_params:,})"


def _spectrum(r: Any, ax) -> None:
    """Top λ_1..λ_k at 1..k, bottom λ_{P-b+1}..λ_P after a gap; error bars ± bounds; the band
    ±tol·‖A‖ in which an eigenvalue is indistinguishable from zero shaded."""
    values, ticks, k = [], [], 0
    if r.top is not None:
        top = r.top.eigenvalues
        k = len(top)
        x = np.arange(1, k + 1)
        which = r"top" if r.top.which != "LM" else r"largest $|\lambda|$:"
        label = rf"{which} $\lambda_1 \ldots \lambda_{{{k}}}$"
        ax.errorbar(
            x, top, yerr=r.bounds("top"), fmt="o-", color="C0", ms=4, capsize=2, label=label
        )
        values.append(top)
        ticks += [int(i) for i in x]
    if r.bottom is not None:
        bottom = r.bottom.eigenvalues
        first = k + 2 if k else 1
        xb = np.arange(first, first + len(bottom))
        label = rf"bottom $\lambda_{{P-{len(bottom) - 1}}} \ldots \lambda_P$"
        if len(bottom) == 1:
            label = r"bottom $\lambda_P$"
        ax.errorbar(
            xb, bottom, yerr=r.bounds("bottom"), fmt="s", color="C3", ms=4, capsize=2, label=label
        )
        values.append(bottom)
        ticks += [int(i) for i in xb]
    band, widest = r.tolerance_bound, max(float(r.bounds(w).max(initial=0.0)) for w in PAIRS)
    label = rf"$\pm\,\mathrm{{tol}}\cdot\|A\|$ = {band:.1g}"
    label += f"; all bounds ≤ {widest:.1g}" if widest > 1.01 * band else ""
    ax.axhspan(-band, band, color="0.85", zorder=0, label=label)
    _scale(ax, np.concatenate(values), band)
    _ticks(ax, k, ticks)
    ax.set(xlabel=r"index $i$", ylabel=r"eigenvalue $\lambda_i$", title="Extreme eigenvalues")
    ax.legend(fontsize=8, loc="best")


def _scale(ax, values: np.ndarray, band: float) -> None:
    """Linear, unless the magnitudes outside the zero band span decades: then log for a
    positive spectrum, else symlog, linear below the decade of the smallest magnitude."""
    values = values[np.isfinite(values)]
    ax.axhline(0, color="0.5", lw=0.6)
    mags = np.abs(values[np.abs(values) > band])
    if mags.size == 0 or mags.max() / mags.min() <= 30:
        return
    if values.min() > band:
        ax.set_yscale("log")
        return
    thresh = 10.0 ** np.floor(np.log10(mags.min()))
    ax.set_yscale("symlog", linthresh=thresh, linscale=0.5)
    ax.set_ylim(-_decade_above(-values.min(), thresh), _decade_above(values.max(), thresh))


def _decade_above(x: float, floor: float) -> float:
    """The power of ten at or above x (at least ``floor``): an axis end with a tick on it."""
    return float(10.0 ** np.ceil(np.log10(x))) if x > floor else floor


def _ticks(ax, k: int, positions: list[int]) -> None:
    """Ticks 1..k (thinned) for the top, "P−j" for the bottom."""
    step = max(1, k // 5)
    labels = {i: str(i) for i in range(1, k + 1) if (i - 1) % step == 0}
    bottom = [p for p in positions if p > k]
    for j, pos in enumerate(bottom):
        offset = len(bottom) - 1 - j
        labels[pos] = f"P−{offset}" if offset else "P"
    ax.set_xticks(list(labels), list(labels.values()), fontsize=8)


def _density(r: Any, ax) -> None:
    d = r.density
    plot.plot_density(d, ax=ax, log=True, title="Spectral density (SLQ)")
    probes, steps = d.nodes.shape
    ax.text(
        0.98,
        0.95,
        f"{probes} probes × {steps} steps\nσ = {d.sigma:.2g}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
    )
    found = [x.eigenvalues for x in (r.top, r.bottom) if x is not None]
    if found:
        ax.vlines(
            np.concatenate(found),
            0,
            0.05,
            transform=ax.get_xaxis_transform(),
            color="C3",
            lw=1,
            label=r"eigsh $\lambda_i$",
        )
        ax.legend(fontsize=8, loc="upper left")
    ax.set(xlabel=r"eigenvalue $\lambda$", ylabel=r"density $\rho(\lambda)$ (log)")


def _layers(r: Any, ax) -> None:
    b = r.layers
    labels = r.layer_labels or list(b.names)
    plot.plot_layers(
        labels,
        b.scores,
        ax=ax,
        title="Per-layer sharpness",
        ylabel=r"score $|\lambda_b|\,/\,\mathrm{max}_c |\lambda_c|$",
    )
    for i, (lam, score) in enumerate(zip(b.eigenvalues, b.scores)):
        if np.isfinite(score):
            ax.annotate(
                rf"$\lambda_b$ = {lam:.3g}", (i, score), ha="center", va="bottom", fontsize=7
            )
    ax.set_ylim(0, 1.15)


def _comparison(r: Any, ax) -> None:
    c = r.comparison
    spectra = {c.exact_name: c.exact_eigenvalues}
    spectra.update({f"{a.name} (overlap {a.overlap:.2f})": a.eigenvalues for a in c.approximations})
    plot.plot_spectrum(spectra, ax=ax, title=f"Exact {c.exact_name} vs approximations")
    ax.set(xlabel=r"index $i$", ylabel=r"eigenvalue $\lambda_i$")
    ax.legend(fontsize=8)


PANELS = {"spectrum": _spectrum, "density": _density, "layers": _layers, "comparison": _comparison}
