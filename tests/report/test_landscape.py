"""``curvops.landscape``: the whole-data loss along directions, its quadratic model, and the
parameters left exactly as they were."""

import numpy as np
import pytest
import torch
from conftest import analyze, make_problem
from oracles import concat_data, dense_hessian
from torch import nn

import curvops
from curvops.landscapes import filter_normalized


def whole_data_loss(model, loss_fn, data) -> float:
    """The loss of all points in one batch (independent of any batch weighting)."""
    X, y = concat_data(data)
    with torch.no_grad():
        return float(loss_fn(model(X), y))


@pytest.fixture(scope="module")
def top(problem):
    return analyze(*problem, parts=["top"]).top


def test_at_zero_the_slice_is_the_whole_data_loss(problem, top):
    model, loss_fn, data = problem
    result = curvops.landscape(model, loss_fn, data, top)
    middle = result.coords[0].size // 2
    assert result.coords[0][middle] == 0.0
    exact = whole_data_loss(model, loss_fn, data)  # batches 7, 5, 4 weigh 7/16, 5/16, 4/16
    assert result.loss0 == pytest.approx(exact, rel=1e-14)
    assert result.loss[middle] == result.loss0 == result.quadratic[middle]


def test_second_difference_along_the_top_eigenvector_is_its_eigenvalue(problem, top):
    h = 1e-4
    result = curvops.landscape(*problem, top, span=h, points=3)
    L = result.loss
    assert (L[0] - 2 * L[1] + L[2]) / h**2 == pytest.approx(top.eigenvalues[0], rel=1e-6)
    assert result.rayleigh[0] == pytest.approx(top.eigenvalues[0], rel=1e-10)
    assert result.curvatures[0, 0] == pytest.approx(top.eigenvalues[0], rel=1e-10)
    assert result.norms[0] == pytest.approx(1.0, abs=1e-12) and result.kind == "eigenvector"


def test_quadratic_model_has_the_dense_gradient_and_hessian(problem):
    model, loss_fn, data = problem
    P = sum(p.numel() for p in model.parameters())
    D = torch.randn(P, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = curvops.landscape(model, loss_fn, data, D, points=5, span=0.1)
    H = dense_hessian(model, loss_fn, data)
    X, y = concat_data(data)
    g = torch.cat(
        [x.reshape(-1) for x in torch.autograd.grad(loss_fn(model(X), y), list(model.parameters()))]
    )
    np.testing.assert_allclose(result.slopes, (D.T @ g).numpy(), rtol=1e-10)
    np.testing.assert_allclose(result.curvatures, (D.T @ H @ D).numpy(), rtol=1e-10)
    a, b = result.coords
    t = np.array([a[4], b[1]])
    expected = result.loss0 + t @ result.slopes + 0.5 * t @ result.curvatures @ t
    assert result.quadratic[4, 1] == pytest.approx(expected, rel=1e-13)
    assert result.loss.shape == result.quadratic.shape == (5, 5) and result.ndim == 2


def test_parameters_are_restored_bitwise_and_no_graph_is_kept(problem, top):
    model, loss_fn, data = problem
    before = [p.detach().clone() for p in model.parameters()]
    watcher = curvops.HessianOperator(model, loss_fn, data, on_stale="raise")
    for directions in (top, "random"):
        result = curvops.landscape(model, loss_fn, data, directions, dims=2, points=3)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        assert all(p.grad is None for p in model.parameters())
        assert isinstance(result.loss, np.ndarray) and isinstance(result.slopes, np.ndarray)
    watcher @ np.ones(watcher.shape[0])  # not stale: the values are back, no version moved


def test_parameters_are_restored_when_the_loss_fails_midway(problem, top):
    model, loss_fn, data = problem
    before = [p.detach().clone() for p in model.parameters()]
    calls = {"n": 0}

    class Failing(nn.CrossEntropyLoss):
        def forward(self, f, y):
            calls["n"] += 1
            if calls["n"] > 60:  # past the operator's checks, inside the grid
                raise RuntimeError("boom")
            return super().forward(f, y)

    with pytest.raises(RuntimeError, match="boom"):
        curvops.landscape(model, Failing(), data, top)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_sum_reduction_weighs_every_batch_once():
    model, _, data = make_problem()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    result = curvops.landscape(model, loss_fn, data, "random", points=3)
    assert result.loss0 == pytest.approx(whole_data_loss(model, loss_fn, data), rel=1e-14)


def test_filter_normalised_directions_match_the_filter_norms(problem):
    model = problem[0]
    params = list(model.parameters())
    d = filter_normalized(params, seed=4)
    parts = torch.split(d, [p.numel() for p in params])
    for p, part in zip(params, parts):
        part = part.view(p.shape)
        if p.ndim >= 2:
            np.testing.assert_allclose(part.norm(dim=1), p.detach().norm(dim=1), rtol=1e-12)
        else:
            assert (part == 0).all()  # biases zeroed (Li et al. 2018)
    kept = torch.split(
        filter_normalized(params, seed=4, biases="keep"), [p.numel() for p in params]
    )
    assert torch.equal(kept[0], parts[0])  # the same weights' directions
    assert float(kept[1].norm()) == pytest.approx(float(params[1].detach().norm()), rel=1e-12)
    assert not torch.equal(d, filter_normalized(params, seed=5))


def test_random_slice_spans_one_filter_norm_by_default(problem):
    result = curvops.landscape(*problem, "random")
    assert result.kind == "random, filter-normalised"
    assert (
        result.coords[0][0] == -1.0 and result.coords[0][-1] == 1.0 and result.coords[0].size == 41
    )


def test_wrong_directions_are_refused(problem, tmp_path):
    with pytest.raises(ValueError, match=r"shape \(P,\) or \(P, d\) with P = 83"):
        curvops.landscape(*problem, np.ones(10))
    with pytest.raises(ValueError, match="1 or 2 directions"):
        curvops.landscape(*problem, "random", dims=3)
    with pytest.raises(ValueError, match="odd integer"):
        curvops.landscape(*problem, "random", points=4)
    report = analyze(*problem, parts=["top"])
    report.save(tmp_path, vectors=False, figure=False)
    with pytest.raises(ValueError, match="holds no eigenvectors"):
        curvops.landscape(*problem, curvops.Report.load(tmp_path))


def test_to_dict_and_figures(problem, top, tmp_path):
    pytest.importorskip("matplotlib")
    one = curvops.landscape(*problem, top)
    d = one.to_dict()
    assert set(d) >= {"coords", "loss", "quadratic", "loss0", "slopes", "curvatures", "rayleigh"}
    assert len(d["loss"]) == 41
    fig = one.plot(tmp_path / "one.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "$t$ along $v_1$" and "Sequential" in ax.get_title()
    assert len(ax.lines) >= 3  # loss, quadratic, t = 0
    left, right = one.departure()
    assert left < 0 < right  # the quadratic model fails somewhere on both sides here
    two = curvops.landscape(*problem, "random", dims=2, points=7)
    two.plot(tmp_path / "two.png")
    assert (tmp_path / "one.png").stat().st_size > 10_000 and (tmp_path / "two.png").is_file()
