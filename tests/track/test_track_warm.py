"""Warm-started measurements against dense float64 truth, at every step of short SGD runs."""

import numpy as np
import pytest
import torch
from oracles import dense_ggn, dense_hessian
from tracking import sgd_run

import curvops
from curvops.track import CurvatureTracker, layer_top_eigenvalues, warm_eigsh
from curvops.track.warm import recompute_residuals

K, EVERY, STEPS, TOL = 4, 5, 30, 1e-8
DENSE = {"hessian": dense_hessian, "ggn": dense_ggn}


def _load(model, params) -> None:
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)


def _slices(model, loss_fn, data):
    return curvops.HessianOperator(model, loss_fn, data, blocks="layer").block_slices


@pytest.mark.parametrize("method", ["lanczos", "lobpcg"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_every_measurement_agrees_with_the_dense_eigendecomposition(curvature, method):
    def make(model, loss_fn, data, opt):
        kw = {"curvature": curvature, "method": method, "layers": True, "optimizer": opt}
        return [CurvatureTracker(model, loss_fn, data, every=EVERY, k=K, tol=TOL, **kw)]

    model, loss_fn, data, _, snapshots = sgd_run(make, STEPS)
    assert [records[0].step for _, records in snapshots] == list(range(EVERY, STEPS + 1, EVERY))
    slices = _slices(model, loss_fn, data)
    for params, (record,) in snapshots:
        _load(model, params)
        H = DENSE[curvature](model, loss_fn, data).numpy()
        top = np.linalg.eigvalsh(H)[::-1][:K]
        np.testing.assert_allclose(record.eigenvalues, top, rtol=1e-7, atol=1e-9 * top[0])
        assert record.all_converged and record.warm == (record.step > EVERY)
        assert max(record.residual_norms) <= 2 * TOL * abs(top[0])
        blocks = [np.linalg.eigvalsh(H[s, s])[-1] for s in slices]
        np.testing.assert_allclose(record.layer_eigenvalues, blocks, rtol=1e-6, atol=1e-9)
        assert all(record.layer_converged)


def test_warm_uses_fewer_products_than_cold_over_the_run():
    def make(model, loss_fn, data, opt):
        kw = {"every": EVERY, "k": K, "tol": 1e-6, "layers": True, "gradient": False}
        return [
            CurvatureTracker(model, loss_fn, data, **kw),
            CurvatureTracker(model, loss_fn, data, warm=False, **kw),
        ]

    _, _, _, (warm, cold), _ = sgd_run(make, STEPS)
    for part in ("eigsh", "layers"):
        w = sum(r.matvecs[part] for r in warm.records[1:])
        c = sum(r.matvecs[part] for r in cold.records[1:])
        assert w < c, (part, w, c)
    assert warm.records[0].matvecs == cold.records[0].matvecs  # the first start is cold too
    for w, c in zip(warm.records, cold.records):
        np.testing.assert_allclose(w.eigenvalues, c.eigenvalues, rtol=1e-5)


def _rotated(diagonal, seed=0):
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(diagonal),) * 2))[0]
    return Q @ np.diag(diagonal) @ Q.T, Q


@pytest.mark.parametrize("method", ["lanczos", "lobpcg"])
def test_an_eigenvalue_entering_from_outside_the_old_subspace_is_found(method):
    d = np.concatenate([[10.0, 9.0, 8.0, 7.0], np.linspace(1.0, 0.1, 36)])
    A1, Q = _rotated(d)
    d2 = d.copy()
    d2[20] = 12.0  # a new top eigenvector, orthogonal to the old top-4 subspace
    A2 = Q @ np.diag(d2) @ Q.T
    res = warm_eigsh(A2, 4, previous=Q[:, :4], tol=1e-10, method=method)
    np.testing.assert_allclose(res.eigenvalues, [12.0, 10.0, 9.0, 8.0], rtol=1e-9)
    assert res.all_converged


@pytest.mark.parametrize("method", ["lanczos", "lobpcg"])
def test_reported_residuals_are_the_true_ones(method):
    d = np.concatenate([[5.0, 4.0, 3.5, 3.0], np.linspace(2.0, -1.0, 26)])
    A, Q = _rotated(d, seed=1)
    start = np.linalg.qr(Q[:, :4] + 0.05 * np.random.default_rng(2).standard_normal((30, 4)))[0]
    res = warm_eigsh(A, 4, previous=start, tol=1e-6, method=method)
    true = np.linalg.norm(A @ res.eigenvectors - res.eigenvectors * res.eigenvalues, axis=0)
    np.testing.assert_allclose(res.residual_norms, true, rtol=1e-6, atol=1e-12)
    assert res.all_converged and (true <= 2 * 1e-6 * 5.0).all()
    np.testing.assert_allclose(res.eigenvalues, d[:4], rtol=1e-8)


def test_recomputed_residuals_match_the_solver_and_cost_k_products():
    A, _ = _rotated(np.linspace(3.0, 0.0, 20))
    res = warm_eigsh(A, 3, previous=None, tol=1e-9)
    saved = res.residual_norms.copy()
    assert recompute_residuals(A, res, 1e-9) == 3
    np.testing.assert_allclose(res.residual_norms, saved, atol=1e-12)
    assert res.all_converged


def test_layer_solves_agree_with_block_top_eigenvalues_and_warm_is_cheaper():
    def make(model, loss_fn, data, opt):
        return []

    model, loss_fn, data, _, _ = sgd_run(make, 5)
    op = curvops.HessianOperator(model, loss_fn, data, blocks="layer")
    cold = layer_top_eigenvalues(op, tol=1e-10)
    reference = curvops.block_top_eigenvalues(op, normalize=True, tol=1e-10)
    np.testing.assert_allclose(cold.eigenvalues, reference.eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(cold.scores, reference.scores, rtol=1e-8)
    assert cold.names == reference.names and cold.converged.all()
    with torch.no_grad():  # a small move of the parameters, as an optimizer step
        for p in model.parameters():
            p.mul_(1.02)
    again = layer_top_eigenvalues(op, tol=1e-10)
    warm = layer_top_eigenvalues(op, previous=cold.vectors, tol=1e-10)
    np.testing.assert_allclose(warm.eigenvalues, again.eigenvalues, rtol=1e-8)
    assert warm.n_matvecs < again.n_matvecs
