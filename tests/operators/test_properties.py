"""Property-based tests (Hypothesis) over random small models, losses, reductions, splits.

Every operator kind, on random MLPs and small CNNs (``strategies.problems``), in float64:
symmetric, PSD where it should be, linear, matmat == stacked matvecs (with and without
column chunks), invariant to the batch split, block Hessian == blocks of the dense one,
KFAC / EKFAC inverses invert K + λI, and float32 operators agree with float64 ones.
Budgets: the active Hypothesis profile (tests/conftest.py: "ci" when CI is set).
"""

import copy

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from models import build_operator
from oracles import dense_hessian
from strategies import problems, resplit

import curvops

EXACT = ["hessian", "ggn", "mc", "empirical"]
KINDS = [*EXACT, "kfac", "ekfac"]
PSD = ["ggn", "mc", "empirical", "kfac", "ekfac"]
CHUNKS = st.sampled_from([None, 2, 64])


def _scale(D):
    return float(D.abs().max()) + 1e-12


@given(problems(), st.sampled_from(KINDS), CHUNKS)
def test_symmetric_and_psd_where_expected(problem, kind, chunk_size):
    D = build_operator(kind, *problem, chunk_size=chunk_size).to_dense()
    assert float((D - D.T).abs().max()) <= 1e-10 * _scale(D)
    if kind in PSD:
        eigs = torch.linalg.eigvalsh((D + D.T) / 2)
        assert float(eigs.min()) >= -1e-10 * _scale(D)


@given(problems(), st.sampled_from(KINDS), st.floats(-3, 3), st.floats(-3, 3))
def test_linear(problem, kind, a, b):
    op = build_operator(kind, *problem)
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, op.shape[0]))
    lhs = op @ (a * u + b * v)
    rhs = a * (op @ u) + b * (op @ v)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-10 * (np.abs(rhs).max() + 1))


@given(problems(), st.sampled_from(KINDS), st.integers(1, 5), CHUNKS)
def test_matmat_is_stack_of_matvecs(problem, kind, k, chunk_size):
    op = build_operator(kind, *problem, chunk_size=chunk_size)
    V = np.random.default_rng(1).standard_normal((op.shape[0], k))
    stacked = np.stack([op @ V[:, j] for j in range(k)], axis=1)
    np.testing.assert_allclose(op.matmat(V), stacked, rtol=1e-10, atol=1e-12)


# MLPs only below: conv products are slow on CPU (per-call overhead of the double backward)
# and these properties are about batch weights and dtypes, which every other test shares
@given(
    problems(conv=False),
    st.sampled_from(["hessian", "ggn", "empirical", "kfac"]),
    st.randoms(use_true_random=False),
)
def test_batch_split_does_not_change_operator(problem, kind, rnd):
    model, loss_fn, data = problem
    N = sum(len(y) for _, y in data)
    cuts = sorted(rnd.sample(range(1, N), min(2, N - 1))) if N > 1 else []
    sizes = np.diff([0, *cuts, N]).tolist()
    a = build_operator(kind, model, loss_fn, data).to_dense()
    b = build_operator(kind, model, loss_fn, resplit(data, sizes)).to_dense()
    assert float((a - b).abs().max()) <= 1e-10 * _scale(a)


@given(problems())
def test_block_hessian_is_diagonal_blocks_of_dense(problem):
    model, loss_fn, data = problem
    op = curvops.HessianOperator(model, loss_fn, data, blocks="layer", chunk_size=64)
    dense = dense_hessian(model, loss_fn, data)
    expected = torch.zeros_like(dense)
    for s in op.block_slices:
        expected[s, s] = dense[s, s]
    assert float((op.to_dense() - expected).abs().max()) <= 1e-10 * _scale(dense)


@given(
    problems(),
    st.sampled_from(["kfac", "ekfac"]),
    st.sampled_from(["type2", "mc", "empirical"]),
    st.floats(1e-3, 10.0),
)
def test_kronecker_inverse_inverts_k_plus_damping(problem, kind, fisher, damping):
    op = build_operator(kind, *problem, fisher=fisher)
    P = op.shape[0]
    K = op.to_dense()
    inv = op.inverse(damping).torch_matmat(torch.eye(P, dtype=torch.float64))
    # (K + λI) has condition number <= (‖K‖ + λ) / λ; the residual is judged against it
    cond = (float(torch.linalg.matrix_norm(K, 2)) + damping) / damping
    residual = (K + damping * torch.eye(P, dtype=torch.float64)) @ inv - torch.eye(P)
    assert float(residual.abs().max()) <= 1e-12 * cond
    assert float((inv - inv.T).abs().max()) <= 1e-12 * cond / damping


@given(problems(conv=False), st.sampled_from(["hessian", "ggn", "empirical", "kfac"]))
def test_float32_operator_matches_float64(problem, kind):
    """A float32 copy of the model (float64 data cast on the fly) gives the float64 operator
    up to float32 round-off. (EKFAC's eigenbasis and MC labels are not unique across dtypes.)"""
    model, loss_fn, data = problem
    D64 = build_operator(kind, model, loss_fn, data).to_dense()
    op32 = build_operator(kind, copy.deepcopy(model).float(), loss_fn, data)
    D32 = op32.to_dense()
    assert op32.dtype == np.float32 and D32.dtype == torch.float32
    err = float((D32.double() - D64).norm() / (D64.norm() + 1e-30))
    assert err <= 1e-4, f"float32 relative error {err:.2e}"
