"""Damped inverses by CG (PSD) and MINRES (indefinite) against dense solves."""

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from models import make_problem

import curvops
from curvops.operators.inverse import DampedInverse, damped_inverse


@pytest.mark.parametrize("kind", ["ggn", "hessian"])
def test_damped_inverse_matches_dense_solve(kind):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    cls = curvops.GGNOperator if kind == "ggn" else curvops.HessianOperator
    A = cls(model, loss_fn, data)
    inv = damped_inverse(A, 0.1, tol=1e-12)
    assert inv.method == ("cg" if kind == "ggn" else "minres")
    B = np.random.default_rng(0).standard_normal((A.shape[0], 3))
    expected = np.linalg.solve(A.to_dense().numpy() + 0.1 * np.eye(A.shape[0]), B)
    np.testing.assert_allclose(inv.matmat(B), expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(inv @ B[:, 0], expected[:, 0], rtol=1e-7, atol=1e-9)


def test_cg_on_plain_operator_and_errors():
    rng = np.random.default_rng(1)
    M = rng.standard_normal((20, 20))
    A = sla.aslinearoperator(M @ M.T)
    inv = DampedInverse(A, 0.5, method="cg", tol=1e-12)
    b = rng.standard_normal(20)
    np.testing.assert_allclose(inv @ b, np.linalg.solve(M @ M.T + 0.5 * np.eye(20), b), rtol=1e-8)
    out = inv.torch_matmat(torch.as_tensor(b))
    assert out.shape == (20,)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        DampedInverse(A, -1.0)
    with pytest.raises(ValueError, match="method must be"):
        DampedInverse(A, 1.0, method="lu")
