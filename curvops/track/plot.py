"""The figure of a tracked run: sharpness (and 2/η), trace, layer scores, subspace drift."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curvops.track.record import CurvatureRecord


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'curvops[plot]'") from err
    return plt


def _panels(records: Sequence[CurvatureRecord]) -> list[str]:
    names = ["sharpness"]
    if any(r.trace is not None for r in records):
        names.append("trace")
    if any(r.layer_scores for r in records):
        names.append("layers")
    if any(r.subspace_cosines for r in records):
        names.append("drift")
    return names


def plot_records(records: Sequence[CurvatureRecord], path: str | Path | None = None) -> Any:
    """One panel each for: λ_1..λ_k over steps with 2/η dashed (if known); the trace ± its
    standard error; the layer scores |λ_b| / max_c |λ_c| as a heat map (blocks x steps);
    the drift 1 − ‖U_prevᵀ U‖_F² / k and the largest principal angle between consecutive
    top-k eigenspaces. Saved to ``path`` if given; returns the figure."""
    if not records:
        raise ValueError("no records to plot: measure at least once")
    plt = _plt()
    names = _panels(records)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.6), squeeze=False)
    draw = {"sharpness": _sharpness, "trace": _trace, "layers": _layers, "drift": _drift}
    for name, ax in zip(names, axes[0]):
        draw[name](records, ax)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(fig)
    return fig


def _steps(records) -> np.ndarray:
    return np.array([r.step for r in records])


def _sharpness(records, ax) -> None:
    steps = _steps(records)
    k = max(len(r.eigenvalues) for r in records)
    values = np.full((len(records), k), np.nan)
    for i, r in enumerate(records):
        values[i, : len(r.eigenvalues)] = r.eigenvalues
    for j in range(k - 1, 0, -1):
        ax.plot(steps, values[:, j], color="0.75", lw=0.8)
    ax.plot(steps, values[:, 0], "o-", ms=3, label="λ_1 (sharpness)")
    if k > 1:
        ax.plot([], [], color="0.75", lw=0.8, label=f"λ_2 .. λ_{k}")
    two = [r.two_over_lr if r.two_over_lr is not None else np.nan for r in records]
    if np.isfinite(two).any():
        ax.plot(steps, two, "k--", lw=1, label="2/η")
    ax.set(xlabel="step", ylabel="eigenvalue", title=f"Top eigenvalues ({records[-1].curvature})")
    ax.legend(fontsize=8, loc="best", framealpha=0.8)


def _trace(records, ax) -> None:
    rows = [(r.step, r.trace, r.trace_stderr or 0.0) for r in records if r.trace is not None]
    steps, est, se = (np.array(x, dtype=float) for x in zip(*rows))
    ax.plot(steps, est, "o-", ms=3)
    ax.fill_between(steps, est - 2 * se, est + 2 * se, alpha=0.25, label="± 2 std. errors")
    ax.set(xlabel="step", ylabel="tr A", title=f"Trace ({records[-1].trace_method})")
    ax.legend(fontsize=8)


def _layers(records, ax) -> None:
    rows = [r for r in records if r.layer_scores]
    names = rows[-1].layer_names or [str(i) for i in range(len(rows[-1].layer_scores or []))]
    scores = np.array([r.layer_scores for r in rows], dtype=float).T  # (blocks, steps)
    steps = _steps(rows)
    edges = np.concatenate([steps - 0.5, [steps[-1] + 0.5]]) if len(steps) == 1 else _edges(steps)
    image = ax.pcolormesh(edges, np.arange(len(names) + 1), scores, vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(np.arange(len(names)) + 0.5, names, fontsize=7)
    ax.invert_yaxis()
    ax.figure.colorbar(image, ax=ax, label="score |λ_b| / max |λ|")
    ax.set(xlabel="step", ylabel="module", title="Layer scores")


def _edges(steps: np.ndarray) -> np.ndarray:
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[2 * steps[0] - mid[0]], mid, [2 * steps[-1] - mid[-1]]])


def _drift(records, ax) -> None:
    rows = [r for r in records if r.subspace_cosines]
    steps = _steps(rows)
    angles = [np.degrees(np.max(r.principal_angles)) for r in rows]
    ax.plot(steps, [r.drift for r in rows], "o-", ms=3, label="1 − ‖U_prevᵀU‖²_F / k")
    ax.set(xlabel="step", ylabel="drift", title="Top-k eigenspace drift", ylim=(-0.02, 1.02))
    twin = ax.twinx()
    twin.plot(steps, angles, "s--", ms=3, color="C1", label="largest angle (°)")
    twin.set(ylabel="largest principal angle (°)", ylim=(-2, 92))
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(  # below the axes: both curves span the full height of the panel
        lines[0] + more[0], lines[1] + more[1], fontsize=8, ncol=2, frameon=False,
        loc="upper center", bbox_to_anchor=(0.5, -0.17),
    )  # fmt: skip
