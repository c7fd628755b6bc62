"""A tiny Hugging Face causal LM with dict batches (optional extra "hf")."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import curvops

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import hf_tiny_lm  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    model, loss_fn, data = hf_tiny_lm.make()
    return model.double(), loss_fn, data


def _gradient(model, loss_fn, data):
    op = curvops.HessianOperator(model, loss_fn, data)
    return op.gradient()


def test_hessian_matches_finite_differences_of_the_gradient(problem):
    """H v ≈ (∇L(θ + εv) − ∇L(θ − εv)) / 2ε, an independent ground truth (error O(ε²))."""
    model, loss_fn, data = problem
    op = curvops.HessianOperator(model, loss_fn, data)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v /= v.norm()
    Hv = op.torch_matmat(v)
    eps = 1e-4
    params = op.params
    with torch.no_grad():
        for p, d in zip(params, op.unflatten(v)):
            p.add_(eps * d)
    g_plus = _gradient(model, loss_fn, data)
    with torch.no_grad():
        for p, d in zip(params, op.unflatten(v)):
            p.sub_(2 * eps * d)
    g_minus = _gradient(model, loss_fn, data)
    with torch.no_grad():
        for p, d in zip(params, op.unflatten(v)):
            p.add_(eps * d)
    fd = (g_plus - g_minus) / (2 * eps)
    assert float((Hv - fd).norm() / Hv.norm()) < 1e-6


def test_ggn_is_symmetric_psd_on_a_subspace(problem):
    model, loss_fn, data = problem
    op = curvops.GGNOperator(model, loss_fn, data)
    V = np.linalg.qr(np.random.default_rng(0).standard_normal((op.shape[0], 6)))[0]
    small = V.T @ op.matmat(V)
    np.testing.assert_allclose(small, small.T, atol=1e-10 * np.abs(small).max())
    assert np.linalg.eigvalsh(small).min() > -1e-10 * np.abs(small).max()


def test_dict_batches_need_no_batch_size_fn(problem):
    model, loss_fn, data = problem
    assert curvops.GGNOperator(model, loss_fn, data).num_data == 10
