"""Hutchinson / Hutch++ trace, Hutchinson diagonal, and the SLQ spectral density."""

import json

import numpy as np
import pytest
import torch
from linalg_cases import TorchOp, indefinite_spectrum, with_spectrum
from scipy.sparse.linalg import aslinearoperator

from curvops.linalg.density import spectral_density
from curvops.linalg.trace import hutchinson_diagonal, hutchinson_trace, hutchpp_trace

D = with_spectrum(indefinite_spectrum(120), seed=5)


def low_rank_plus_noise(seed: int = 0, P: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = np.concatenate([np.linspace(100, 20, 10), 0.05 * rng.standard_normal(P - 10)])
    return with_spectrum(d, seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("estimator", [hutchinson_trace, hutchpp_trace])
def test_trace_within_four_standard_errors(estimator, seed):
    est = estimator(aslinearoperator(D), seed=seed)
    assert est.std_error > 0
    assert abs(est.estimate - np.trace(D)) < 4 * est.std_error
    assert est.n_matvecs in (100, 102)
    json.dumps(est.to_dict())


def test_hutchpp_beats_hutchinson_at_equal_matvecs():
    """Low-rank-plus-noise: mean |error| over 8 seeds, 60 products each."""
    A = low_rank_plus_noise()
    exact = np.trace(A)
    err_h = [abs(hutchinson_trace(A, n_probes=60, seed=s).estimate - exact) for s in range(8)]
    err_pp = [abs(hutchpp_trace(A, n_matvecs=60, seed=s).estimate - exact) for s in range(8)]
    assert hutchpp_trace(A, n_matvecs=60).n_matvecs == 60
    assert np.mean(err_pp) < 0.2 * np.mean(err_h)


def test_probes_do_not_depend_on_chunking_or_operator_kind():
    a = hutchinson_trace(aslinearoperator(D), n_probes=20, chunk=1)
    b = hutchinson_trace(TorchOp(D), n_probes=20, chunk=7)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-12)
    assert hutchinson_trace(D, n_probes=20, seed=1).estimate != pytest.approx(a.estimate)


def test_diagonal():
    est = hutchinson_diagonal(aslinearoperator(D), n_probes=200)
    z = (est.diagonal - np.diag(D)) / est.std_error
    assert est.diagonal.shape == est.std_error.shape == (D.shape[0],)
    assert np.mean(np.abs(z) < 3) > 0.95
    exact = hutchinson_diagonal(np.diag(np.arange(5.0)), n_probes=3)  # z ⊙ Λz = diag(Λ)
    np.testing.assert_array_equal(exact.diagonal, np.arange(5.0))
    np.testing.assert_array_equal(exact.std_error, 0)


@pytest.mark.parametrize("kind", [aslinearoperator, TorchOp])
def test_density_integrates_to_one_spans_and_has_the_right_mean(kind):
    dens = spectral_density(kind(D), n_probes=10, lanczos_steps=60)
    lo, hi = np.linalg.eigvalsh(D)[[0, -1]]
    assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1, abs=1e-12)
    assert dens.grid[0] < lo and dens.grid[-1] > hi
    assert (dens.density >= 0).all()
    assert dens.nodes.shape == dens.weights.shape == (10, 60)
    np.testing.assert_allclose(dens.weights.sum(1), 1, rtol=1e-10)
    np.testing.assert_allclose(dens.nodes.max(), hi, rtol=1e-8)  # extreme Ritz values converge
    # Gauss quadrature is exact for t, so ∫ t ρ = (1/n) Σ zᵀAz / P: the Hutchinson estimate
    # with the same probes (up to the grid's discretisation), and within 4 of its standard
    # errors of the exact tr(A) / P.
    mean = np.trapezoid(dens.grid * dens.density, dens.grid)
    hutch = hutchinson_trace(kind(D), n_probes=10)
    assert mean == pytest.approx(hutch.estimate / D.shape[0], rel=1e-6)
    assert abs(mean - np.trace(D) / D.shape[0]) < 4 * hutch.std_error / D.shape[0]
    assert dens.mean() == pytest.approx(mean, rel=1e-6)
    assert dens.n_matvecs == 600
    json.dumps(dens.to_dict())


def test_density_with_more_steps_than_p_recovers_the_spectrum():
    d = np.array([-3.0, -1, 0.5, 2, 2, 7])
    dens = spectral_density(with_spectrum(d), n_probes=3, lanczos_steps=50, sigma=0.05)
    assert dens.nodes.shape == (3, 6)
    for theta, w in zip(dens.nodes, dens.weights):
        hit = w > 1e-12
        assert np.isin(np.round(theta[hit], 8), np.round(d, 8)).all()
    peak = dens.grid[np.argmax(dens.density)]
    assert peak == pytest.approx(2, abs=0.05)


def test_density_custom_grid_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    grid = np.linspace(-30, 40, 500)
    dens = spectral_density(torch.as_tensor(D), n_probes=2, lanczos_steps=20, grid=grid, sigma=1)
    np.testing.assert_array_equal(dens.grid, grid)
    fig = dens.plot(tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 0
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: hutchinson_trace(D, n_probes=0), "n_probes"),
        (lambda: hutchpp_trace(D, n_matvecs=2), "n_matvecs"),
        (lambda: hutchinson_diagonal(D, n_probes=0), "n_probes"),
        (lambda: spectral_density(D, n_probes=0), "n_probes"),
        (lambda: spectral_density(D, lanczos_steps=0), "lanczos_steps"),
        (lambda: spectral_density(D, sigma=-1.0), "sigma"),
        (lambda: spectral_density(D, grid=[1.0, 0.0]), "increasing"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
