"""Figures are written and hold what they should (axes, lines, bars)."""

from types import SimpleNamespace

import numpy as np
import pytest
from models import make_problem

import curvops
from curvops import plot
from curvops.compare import compare

pytest.importorskip("matplotlib")


def test_comparison_figure(tmp_path):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    G = curvops.GGNOperator(model, loss_fn, data, blocks="layer")
    E = curvops.GGNOperator(model, loss_fn, data, blocks="layer", mode="empirical")
    fig = compare(G, {"EF": E}, k=3).plot(tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    assert len(fig.axes) == 3
    assert len(fig.axes[1].patches) == len(G.block_slices)  # one bar per block


def test_spectrum_density_layers(tmp_path):
    fig = plot.plot_spectrum({"a": np.array([3.0, 2.0, -1.0])}, path=tmp_path / "s.png")
    assert len(fig.axes[0].lines) == 2  # the spectrum and the zero line
    grid = np.linspace(-1, 1, 50)
    dens = SimpleNamespace(grid=grid, density=np.exp(-(grid**2)))
    plot.plot_density(dens, log=True, path=tmp_path / "d.png")
    fig = plot.plot_layers(["l1", "l2", "l3"], [1.0, float("nan"), 0.5], path=tmp_path / "l.png")
    assert [t.get_text() for t in fig.axes[0].texts] == ["n/a"]
    for name in ("s.png", "d.png", "l.png"):
        assert (tmp_path / name).stat().st_size > 5_000
