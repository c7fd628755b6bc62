"""Property-based tests (Hypothesis) over random small models, losses, reductions, splits."""

import numpy as np
import torch
from groundtruth import dense_hessian
from hypothesis import given
from hypothesis import strategies as st
from strategies import problems, resplit

import curvops

KINDS = ["hessian", "ggn", "mc", "empirical"]


def build(kind, model, loss_fn, data, **kw):
    if kind == "hessian":
        return curvops.HessianOperator(model, loss_fn, data, **kw)
    mode = {"ggn": "exact"}.get(kind, kind)
    return curvops.GGNOperator(model, loss_fn, data, mode=mode, **kw)


def _scale(D):
    return float(D.abs().max()) + 1e-12


@given(problems(), st.sampled_from(KINDS))
def test_symmetric(problem, kind):
    D = build(kind, *problem).to_dense()
    assert float((D - D.T).abs().max()) <= 1e-10 * _scale(D)


@given(problems(), st.sampled_from(["ggn", "mc", "empirical"]))
def test_psd(problem, kind):
    D = build(kind, *problem).to_dense()
    eigs = torch.linalg.eigvalsh((D + D.T) / 2)
    assert float(eigs.min()) >= -1e-10 * _scale(D)


@given(problems(), st.sampled_from(KINDS), st.floats(-3, 3), st.floats(-3, 3))
def test_linear(problem, kind, a, b):
    op = build(kind, *problem)
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, op.shape[0]))
    lhs = op @ (a * u + b * v)
    rhs = a * (op @ u) + b * (op @ v)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-10 * (np.abs(rhs).max() + 1))


@given(problems(), st.sampled_from(KINDS), st.integers(1, 5))
def test_matmat_is_stack_of_matvecs(problem, kind, k):
    op = build(kind, *problem)
    V = np.random.default_rng(1).standard_normal((op.shape[0], k))
    stacked = np.stack([op @ V[:, j] for j in range(k)], axis=1)
    np.testing.assert_allclose(op.matmat(V), stacked, rtol=1e-10, atol=1e-12)


@given(
    problems(), st.sampled_from(["hessian", "ggn", "empirical"]), st.randoms(use_true_random=False)
)
def test_batch_split_does_not_change_operator(problem, kind, rnd):
    model, loss_fn, data = problem
    N = sum(len(y) for _, y in data)
    cuts = sorted(rnd.sample(range(1, N), min(2, N - 1))) if N > 1 else []
    sizes = np.diff([0, *cuts, N]).tolist()
    a = build(kind, model, loss_fn, data).to_dense()
    b = build(kind, model, loss_fn, resplit(data, sizes)).to_dense()
    assert float((a - b).abs().max()) <= 1e-10 * _scale(a)


@given(problems())
def test_block_hessian_is_diagonal_blocks_of_dense(problem):
    model, loss_fn, data = problem
    op = curvops.HessianOperator(model, loss_fn, data, blocks="layer")
    dense = dense_hessian(model, loss_fn, data)
    expected = torch.zeros_like(dense)
    for s in op.block_slices:
        expected[s, s] = dense[s, s]
    assert float((op.to_dense() - expected).abs().max()) <= 1e-10 * _scale(dense)
