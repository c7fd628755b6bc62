"""``curvops.analyze`` against dense float64 truth, for every quantity the report holds."""

import numpy as np
import pytest
import torch
from conftest import BOTTOM, DENSITY_PROBES, N_PROBES, K, analyze
from oracles import dense_ggn, dense_hessian

import curvops


@pytest.fixture(scope="module")
def dense(problem):
    """The Hessian's eigenvalues (ascending) and the dense Hessian, over the whole data."""
    H = dense_hessian(*problem).numpy()
    return np.linalg.eigvalsh(H), H


def test_top_and_bottom_eigenvalues_lie_within_their_stated_bounds(report, dense):
    truth, _ = dense
    assert report.top.all_converged and report.bottom.all_converged
    np.testing.assert_array_less(
        np.abs(report.top.eigenvalues - truth[::-1][:K]), report.bounds("top")
    )
    bottom_truth = truth[:BOTTOM][::-1]  # descending, as EigenResult
    np.testing.assert_array_less(
        np.abs(report.bottom.eigenvalues - bottom_truth), report.bounds("bottom")
    )
    norm = np.abs(truth).max()
    assert report.norm_estimate == pytest.approx(norm, rel=1e-6)
    assert report.tolerance_bound == pytest.approx(1e-6 * norm, rel=1e-6)
    assert (report.bounds("top") >= report.tolerance_bound).all()


def test_trace_within_four_standard_errors_of_the_exact_trace(report, dense):
    _, H = dense
    t = report.trace
    assert t.method == "hutch++" and t.n_matvecs == N_PROBES
    assert t.std_error > 0
    assert abs(t.estimate - np.trace(H)) <= 4 * t.std_error


def test_layer_top_eigenvalues_are_the_dense_block_eigenvalues(problem, report, dense):
    _, H = dense
    blocks = curvops.HessianOperator(*problem, blocks="layer")
    truth = np.array([np.linalg.eigvalsh(H[s, s]).max() for s in blocks.block_slices])
    layers = report.layers
    assert layers.names == blocks.block_names == ["0", "2"]
    assert layers.sizes == [56, 27]  # the first block is solved iteratively, the second densely
    np.testing.assert_allclose(layers.eigenvalues, truth, rtol=1e-5)
    np.testing.assert_allclose(layers.scores, np.abs(truth) / np.abs(truth).max(), rtol=1e-5)
    assert report.layer_labels == ["0 Linear", "2 Linear"]


def test_density_integrates_to_one_and_its_mean_is_the_trace_over_P(problem, report, dense):
    _, H = dense
    d, P = report.density, H.shape[0]
    assert d.nodes.shape == (DENSITY_PROBES, 40)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-12)
    same_probes = curvops.hutchinson_trace(H, n_probes=DENSITY_PROBES, seed=0)
    assert d.mean() == pytest.approx(same_probes.estimate / P, rel=1e-9)  # Gauss quadrature
    assert abs(d.mean() - np.trace(H) / P) <= 4 * same_probes.std_error / P


def test_comparison_is_the_exact_ggn_against_kfac_and_ekfac(problem, report):
    G = dense_ggn(*problem).numpy()
    c = report.comparison
    assert c.exact_name == "GGN" and c.method == "dense" and c.k == K
    assert [a.name for a in c.approximations] == ["KFAC", "EKFAC"]
    np.testing.assert_allclose(c.exact_eigenvalues, np.linalg.eigvalsh(G)[::-1][:K], rtol=1e-10)
    assert c.exact_trace == pytest.approx(np.trace(G), rel=1e-10)


def test_provenance_names_versions_machine_model_data_settings_and_cost(report):
    p = report.provenance
    assert set(p.versions) == {"curvops", "torch", "numpy", "scipy", "python"}
    assert p.versions["curvops"] == curvops.__version__ and p.versions["torch"] == torch.__version__
    assert p.device == "cpu" and p.threads == torch.get_num_threads()
    assert (p.model, p.num_params, p.num_data) == ("Sequential", 83, 16)
    assert (p.loss, p.reduction, p.dtype) == ("CrossEntropyLoss", "mean", "float64")
    assert p.settings["curvature"] == "hessian" and p.settings["k"] == K
    assert p.settings["tol"] == 1e-6 and p.settings["seed"] == 0
    assert p.settings["n_probes"] == N_PROBES and p.settings["backend"] == "lanczos"
    assert p.settings["compare"] == ["kfac", "ekfac"]
    assert list(p.steps) == ["build", "top", "bottom", "trace", "density", "layers", "compare"]
    for part in ("top", "bottom", "trace", "density"):  # every product of the step is counted
        assert p.steps[part].products == getattr(report, part).n_matvecs
    assert p.steps["compare"].products >= 83  # the dense route: P columns of the exact GGN
    assert all(s.seconds >= 0 for s in p.steps.values())


def test_summary_states_every_part_with_its_bounds(report):
    text = report.summary()
    assert text.startswith("curvops report: Sequential, Hessian of CrossEntropyLoss (mean)")
    assert "N = 16 data points, P = 83 parameters" in text
    assert f"Top-{K} eigenvalues" in text and f"Bottom-{BOTTOM} eigenvalues" in text
    assert f"{report.top.eigenvalues[0]:.6g}" in text
    assert f"± {report.bounds('top')[0]:.2g}" in text
    assert f"tr A = {report.trace.estimate:.6g} ± {report.trace.std_error:.2g}" in text
    assert "0 Linear" in text and "Exact GGN vs KFAC, EKFAC" in text and "total" in text
    assert "nan" not in text.lower()


def test_small_eigenvalues_are_flagged_within_their_bounds():
    """The GGN of 16 points and 3 classes has rank <= 32 < P = 83: its bottom is 0."""
    from conftest import make_problem

    model, loss_fn, data = make_problem()
    report = analyze(model, loss_fn, data, curvature="ggn", parts=["top", "bottom"])
    assert report.curvature_name == "GGN"
    np.testing.assert_array_less(np.abs(report.bottom.eigenvalues), report.bounds("bottom"))
    text = report.summary()
    assert text.count("indistinguishable from 0") == BOTTOM
    assert report.trace is None and report.density is None and report.layers is None


def test_kfac_curvature_uses_its_own_blocks(problem):
    report = analyze(*problem, curvature="kfac", parts=["layers"])
    assert report.top is None
    assert report.layers.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert report.layer_labels == report.layers.names


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"parts": ["top", "spectrum"]}, "parts must be a list of"),
        ({"parts": "top"}, "parts must be a list of"),
        ({"compare": ["shampoo"]}, "compare must be a list of"),
        ({"compare": []}, "leaves nothing to compare"),
        ({"curvature": "fisher"}, "curvature must be one of"),
    ],
)
def test_wrong_options_are_refused_before_any_work(problem, kw, match):
    with pytest.raises(ValueError, match=match):
        curvops.analyze(*problem, **kw)


def test_report_figure_has_a_panel_per_part(tmp_path, report):
    pytest.importorskip("matplotlib")
    fig = report.plot(tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 30_000
    spectrum, density, layers, comparison = fig.axes
    assert "Sequential" in fig.texts[0].get_text() and "Hessian" in fig.texts[0].get_text()
    assert spectrum.get_ylabel() == r"eigenvalue $\lambda_i$"
    labels = [t.get_text() for t in spectrum.get_legend().get_texts()]
    assert any("bottom" in t for t in labels) and any("top" in t for t in labels)
    assert [t.get_text() for t in spectrum.get_xticklabels()][-BOTTOM:] == ["P−2", "P−1", "P"]
    assert density.get_yscale() == "log"
    assert len(layers.patches) == 2 and comparison.get_legend() is not None
