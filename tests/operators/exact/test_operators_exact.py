"""Hessian and GGN operators against dense float64 ground truth (torch.func)."""

import pytest
import torch
from models import MODELS, batch_size_fn, make_problem
from oracles import dense_empirical_fisher, dense_ggn, dense_hessian

import curvops

LOSSES = ["mse", "ce", "bce"]
REDUCTIONS = ["mean", "sum"]


def _assert_close(A, B, rtol=1e-10):
    scale = B.abs().max().clamp(min=1e-12)
    assert (A.cpu() - B.cpu()).abs().max() <= rtol * scale, float((A.cpu() - B.cpu()).abs().max())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", MODELS)
def test_hessian_matches_dense(name, loss, reduction):
    model, loss_fn, data = make_problem(name, loss, reduction)
    op = curvops.HessianOperator(model, loss_fn, data, batch_size_fn=batch_size_fn(name))
    _assert_close(op.to_dense(), dense_hessian(model, loss_fn, data))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", MODELS)
def test_ggn_matches_dense(name, loss, reduction):
    model, loss_fn, data = make_problem(name, loss, reduction)
    op = curvops.GGNOperator(model, loss_fn, data, batch_size_fn=batch_size_fn(name))
    _assert_close(op.to_dense(), dense_ggn(model, loss_fn, data))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ["mlp_tanh", "cnn", "sequence", "dict_input"])
def test_empirical_fisher_matches_dense(name, loss, reduction):
    model, loss_fn, data = make_problem(name, loss, reduction)
    op = curvops.GGNOperator(
        model, loss_fn, data, mode="empirical", batch_size_fn=batch_size_fn(name)
    )
    _assert_close(op.to_dense(), dense_empirical_fisher(model, loss_fn, data))


@pytest.mark.parametrize("name", ["mlp_tanh", "cnn", "sequence"])
def test_forward_over_reverse_equals_double_backward(name):
    model, loss_fn, data = make_problem(name, "ce")
    a = curvops.HessianOperator(model, loss_fn, data).to_dense()
    b = curvops.HessianOperator(model, loss_fn, data, hvp="forward_over_reverse").to_dense()
    _assert_close(a, b)


def test_hessian_accepts_any_loss_callable():
    model, _, data = make_problem("mlp_tanh", "mse")

    def loss_fn(out, y):  # a plain function: taken as a mean over the batch
        return torch.log1p((out - y) ** 2).sum(dim=1).mean()

    op = curvops.HessianOperator(model, loss_fn, data)
    _assert_close(op.to_dense(), dense_hessian(model, loss_fn, data))
    summed = curvops.HessianOperator(
        model, lambda o, t: torch.log1p((o - t) ** 2).sum(), data, reduction="sum"
    )
    _assert_close(
        summed.to_dense(), dense_hessian(model, lambda o, t: torch.log1p((o - t) ** 2).sum(), data)
    )


@pytest.mark.parametrize("op_cls", [curvops.HessianOperator, curvops.GGNOperator])
@pytest.mark.parametrize("name", ["mlp_tanh", "cnn", "batchnorm_eval"])
def test_layer_blocks_are_the_diagonal_blocks(op_cls, name):
    model, loss_fn, data = make_problem(name, "ce")
    full = curvops.HessianOperator if op_cls is curvops.HessianOperator else None
    dense = (dense_hessian if full else dense_ggn)(model, loss_fn, data)
    op = op_cls(model, loss_fn, data, blocks="layer")
    expected = torch.zeros_like(dense)
    for s in op.block_slices:  # "layer" keeps model.parameters() order for these models
        expected[s, s] = dense[s, s]
    _assert_close(op.to_dense(), expected)
    assert len(op.block_slices) == len({n.rsplit(".", 1)[0] for n in op.param_names})


def test_custom_blocks_reorder_params():
    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    w0, b0, w1, b1 = model.parameters()
    op = curvops.HessianOperator(model, loss_fn, data, blocks=[[w1, w0], [b0, b1]])
    assert [p is q for p, q in zip(op.params, [w1, w0, b0, b1])] == [True] * 4
    dense = dense_hessian(model, loss_fn, data, params=[w1, w0, b0, b1])
    expected = torch.zeros_like(dense)
    for s in op.block_slices:
        expected[s, s] = dense[s, s]
    _assert_close(op.to_dense(), expected)


def test_params_subset():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    params = [model[2].weight, model[0].bias]
    for cls, truth in ((curvops.HessianOperator, dense_hessian), (curvops.GGNOperator, dense_ggn)):
        op = cls(model, loss_fn, data, params=params)
        assert op.shape == (20, 20)
        _assert_close(op.to_dense(), truth(model, loss_fn, data, params=params))
