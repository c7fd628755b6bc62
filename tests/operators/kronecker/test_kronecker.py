"""Kronecker-factor algebra vs dense torch.kron, and the closed forms of KFAC / EKFAC."""

import io
import math

import numpy as np
import pytest
import torch
from kfac_models import make

from curvops.operators.kronecker.algebra import KroneckerBlock, SymFactor
from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator


def _spd(n, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank or n + 2, generator=g, dtype=torch.float64)
    return X @ X.T


def _block(E=False, rank=None):
    G, A = _spd(3, 0), _spd(4, 1, rank)
    blk = KroneckerBlock((0,), SymFactor(G), SymFactor(A))
    if E:
        blk.E = torch.rand(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return blk


def _dense(blk):
    if blk.E is None:
        return torch.kron(blk.G.mat, blk.A.mat)
    Q = torch.kron(blk.G.eig[1], blk.A.eig[1])
    return Q @ torch.diag(blk.E.reshape(-1)) @ Q.T


def _apply(fn, n_rows=3, n_cols=4):
    V = torch.eye(n_rows * n_cols, dtype=torch.float64).T.reshape(-1, n_rows, n_cols)
    return fn(V).reshape(n_rows * n_cols, -1).T  # column j = fn(e_j)


@pytest.mark.parametrize("E", [False, True])
def test_block_matmat_inverse_and_scalars_match_dense(E):
    blk = _block(E)
    K = _dense(blk)
    torch.testing.assert_close(_apply(blk.matmat), K)
    inv = _apply(lambda V: blk.inverse_matmat(V, 0.3, heuristic=False))
    torch.testing.assert_close(
        inv @ (K + 0.3 * torch.eye(12, dtype=K.dtype)), torch.eye(12, dtype=K.dtype)
    )
    assert blk.trace() == pytest.approx(float(torch.trace(K)))
    assert math.sqrt(blk.frobenius_sq()) == pytest.approx(float(K.norm()))
    expected = float(torch.logdet(K + 0.3 * torch.eye(12, dtype=K.dtype)))
    assert blk.logdet(0.3) == pytest.approx(expected)


def test_heuristic_pi_damping_is_the_damped_factor_product():
    blk, d = _block(), 0.5
    G, A = blk.G.mat, blk.A.mat
    pi = math.sqrt((torch.trace(A) / 4) / (torch.trace(G) / 3))
    I3, I4 = torch.eye(3, dtype=G.dtype), torch.eye(4, dtype=G.dtype)
    dense = torch.kron(
        torch.linalg.inv(G + math.sqrt(d) / pi * I3), torch.linalg.inv(A + pi * math.sqrt(d) * I4)
    )
    torch.testing.assert_close(_apply(lambda V: blk.inverse_matmat(V, d, heuristic=True)), dense)


def test_singular_block_logdet_minus_inf_and_inverse_refused():
    blk = _block(rank=2)  # A has rank 2 of 4
    assert blk.logdet(0.0) == -math.inf
    assert math.isfinite(blk.logdet(1e-3))
    with pytest.raises(ValueError, match="singular"):
        blk.inverse_matmat(torch.ones(1, 3, 4, dtype=torch.float64), 0.0, heuristic=False)


OPS = [KFACOperator, EKFACOperator]


@pytest.mark.parametrize("cls", OPS)
@pytest.mark.parametrize("separate", [True, False])
def test_operator_inverse_trace_logdet_frobenius_match_dense(cls, separate):
    model, loss_fn, data = make("cnn", "ce")
    op = cls(model, loss_fn, data, separate_weight_and_bias=separate)
    K = op.to_dense()
    eye = torch.eye(K.shape[0], dtype=K.dtype)
    lam = 1e-2
    inv = op.inverse(lam)
    assert inv.shape == op.shape and inv.dtype == op.dtype and inv.device == op.device
    torch.testing.assert_close(inv.torch_matmat(K + lam * eye), eye, atol=1e-8, rtol=0)
    np.testing.assert_allclose(inv @ (K + lam * eye).numpy()[:, 0], eye[:, 0].numpy(), atol=1e-8)
    assert op.trace() == pytest.approx(float(torch.trace(K)), rel=1e-10)
    assert op.frobenius_norm() == pytest.approx(float(K.norm()), rel=1e-10)
    assert op.logdet(lam) == pytest.approx(float(torch.logdet(K + lam * eye)), rel=1e-9)
    with pytest.raises(ValueError, match="damping"):
        op.inverse(-1.0)
    with pytest.raises(ValueError, match="damping"):
        op.logdet(-1.0)


def test_kfac_logdet_of_singular_is_minus_inf_and_heuristic_inverse_is_spd():
    model, loss_fn, data = make("mlp", "ce", sizes=(1,))
    op = KFACOperator(model, loss_fn, data)
    assert op.logdet() == -math.inf
    with pytest.raises(ValueError, match="singular"):
        op.inverse(0.0).torch_matmat(torch.ones(op.shape[0], dtype=torch.float64))
    H = op.inverse(0.1, heuristic=True).torch_matmat(torch.eye(op.shape[0], dtype=torch.float64))
    torch.testing.assert_close(H, H.T)
    assert torch.linalg.eigvalsh(H).min() > 0


def test_ekfac_refuses_heuristic_damping():
    model, loss_fn, data = make("mlp", "ce")
    op = EKFACOperator(model, loss_fn, data)
    with pytest.raises(ValueError, match="heuristic"):
        op.inverse(0.1, heuristic=True).torch_matmat(torch.ones(op.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("cls", OPS)
def test_state_dict_round_trip_through_torch_save(cls):
    model, loss_fn, data = make("cnn", "mse")
    op = cls(model, loss_fn, data, separate_weight_and_bias=False)
    buf = io.BytesIO()
    torch.save(op.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other_model, _, other_data = make("cnn", "mse", seed=5)  # same shapes, other values
    other = cls(other_model, loss_fn, other_data, separate_weight_and_bias=False)
    assert (other.to_dense() - op.to_dense()).abs().max() > 1e-3
    other.load_state_dict(state)
    torch.testing.assert_close(other.to_dense(), op.to_dense(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", OPS)
def test_load_state_dict_refuses_factors_that_do_not_fit(cls):
    model, loss_fn, data = make("mlp", "ce")
    state = cls(model, loss_fn, data).state_dict()
    wider = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    other = cls(wider.double(), loss_fn, data)
    with pytest.raises(ValueError, match=r"layer '0'.*shape \(5, 5\).*\(6, 6\)"):
        other.load_state_dict(state)
    joint = cls(model, loss_fn, data, separate_weight_and_bias=False)
    with pytest.raises(ValueError, match="do not fit"):
        joint.load_state_dict(state)
    with pytest.raises(ValueError, match="not of a"):
        other.load_state_dict({**state, "kind": "Other"})
