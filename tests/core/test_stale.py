"""Stale state: every operator notices that the model changed since it was built.

An optimizer step between two products: with ``on_stale="recompute"`` the second product is
that of the moved model (dense float64 ground truth, or a freshly built operator where no
dense truth exists: MC Fisher, KFAC, EKFAC); with ``on_stale="raise"`` it raises
``StaleOperatorError`` until ``op.refresh()``.
"""

import pytest
import torch
from models import build_operator, make_problem
from oracles import dense_empirical_fisher, dense_ggn, dense_hessian

import curvops
from curvops import StaleOperatorError

KINDS = ["hessian", "hessian_blocks", "ggn", "mc", "empirical", "kfac", "ekfac"]


def truth(kind, model, loss_fn, data):
    """The dense matrix at the model's current parameters (float64)."""
    if kind in ("mc", "kfac", "ekfac"):  # no closed form: a fresh operator (tested elsewhere)
        return build_operator(kind, model, loss_fn, data).to_dense()
    if kind == "ggn":
        return dense_ggn(model, loss_fn, data)
    if kind == "empirical":
        return dense_empirical_fisher(model, loss_fn, data)
    H = dense_hessian(model, loss_fn, data)
    if kind == "hessian":
        return H
    blocks = build_operator(kind, model, loss_fn, data).block_slices
    out = torch.zeros_like(H)
    for s in blocks:
        out[s, s] = H[s, s]
    return out


def sgd_step(model, loss_fn, data, lr=0.5):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for X, y in data:
        loss_fn(model(X), y).backward()
    opt.step()
    opt.zero_grad()


def directions(P, k=3):
    return torch.randn(P, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def assert_matches(actual, expected):
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10 * scale)


def assert_moved(before, after):
    """The step changed the product: the comparison after it has teeth."""
    assert float((before - after).abs().max()) > 1e-3 * float(before.abs().max())


@pytest.mark.parametrize("kind", KINDS)
def test_recompute_follows_an_optimizer_step(kind):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = build_operator(kind, model, loss_fn, data, on_stale="recompute")
    V = directions(op.shape[0])
    before = op.torch_matmat(V)
    assert not op.is_stale
    sgd_step(model, loss_fn, data)
    assert op.is_stale
    after = op.torch_matmat(V)
    assert not op.is_stale
    assert_matches(after, truth(kind, model, loss_fn, data) @ V)
    assert_moved(before, after)


@pytest.mark.parametrize("kind", KINDS)
def test_raise_after_an_optimizer_step_until_refreshed(kind):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = build_operator(kind, model, loss_fn, data, on_stale="raise")
    V = directions(op.shape[0])
    before = op.torch_matmat(V)
    sgd_step(model, loss_fn, data)
    name = type(op).__name__
    with pytest.raises(StaleOperatorError, match=rf"{name} is stale.*op\.refresh\(\)"):
        op.torch_matmat(V)
    with pytest.raises(StaleOperatorError):
        op @ V[:, 0].numpy()
    with pytest.raises(StaleOperatorError):
        op.gradient()
    op.refresh()
    after = op.torch_matmat(V)
    assert_matches(after, truth(kind, model, loss_fn, data) @ V)
    assert_moved(before, after)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_closed_forms_and_inverse_are_guarded_too(kind):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = build_operator(kind, model, loss_fn, data)  # on_stale="raise" is the default here
    inv = op.inverse(0.1)
    sgd_step(model, loss_fn, data)
    for call in (op.trace, op.logdet, op.frobenius_norm, lambda: inv @ directions(43)[:, 0]):
        with pytest.raises(StaleOperatorError):
            call()
    following = build_operator(kind, model, loss_fn, data, on_stale="recompute")
    sgd_step(model, loss_fn, data)
    fresh = build_operator(kind, model, loss_fn, data)
    assert following.trace() == pytest.approx(fresh.trace(), rel=1e-12)


def test_defaults_hessian_and_ggn_follow_kfac_raises():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    ops = [
        build_operator(kind, model, loss_fn, data) for kind in ("hessian", "ggn", "kfac", "ekfac")
    ]
    assert [op.on_stale for op in ops] == ["recompute", "recompute", "raise", "raise"]


def _edit_data(model):
    model[2].weight.data.mul_(1.5)  # bypasses the version counter


def _reassign_data(model):
    model[2].weight.data = model[2].weight.data * 1.5


def _load_state_dict(model):
    state = {k: v * 1.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state)


def _frozen_parameter(model):
    model[0].weight.requires_grad_(False)  # not among the operator's params: still its curvature
    with torch.no_grad():
        model[0].weight.mul_(1.5)


@pytest.mark.parametrize(
    "change", [_edit_data, _reassign_data, _load_state_dict, _frozen_parameter]
)
@pytest.mark.parametrize("kind", ["hessian", "kfac"])
def test_every_way_of_changing_parameters_is_noticed(kind, change):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    params = [p for n, p in model.named_parameters() if n != "0.weight"]
    op = build_operator(kind, model, loss_fn, data, params=params, on_stale="raise")
    V = directions(op.shape[0])
    before = op.torch_matmat(V)
    change(model)
    with pytest.raises(StaleOperatorError):
        op.torch_matmat(V)
    op.refresh()
    after = op.torch_matmat(V)
    assert_matches(after, build_operator(kind, model, loss_fn, data, params=params).torch_matmat(V))
    assert_moved(before, after)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_changed_buffers_are_noticed(kind):
    model, loss_fn, data = make_problem("batchnorm_eval", "ce")
    op = build_operator(kind, model, loss_fn, data, on_stale="raise")
    following = build_operator(kind, model, loss_fn, data)
    V = directions(op.shape[0])
    before = following.torch_matmat(V)
    model[1].running_var.mul_(3.0)
    with pytest.raises(StaleOperatorError):
        op.torch_matmat(V)
    after = following.torch_matmat(V)
    assert_matches(after, truth(kind, model, loss_fn, data) @ V)
    assert_moved(before, after)


def test_unchanged_model_is_never_recomputed(monkeypatch):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.KFACOperator(model, loss_fn, data, on_stale="recompute")
    calls, compute = [], op.compute
    monkeypatch.setattr(op, "compute", lambda: calls.append(1) or compute())
    V = directions(op.shape[0])
    op.torch_matmat(V)
    op.trace()
    model.zero_grad()
    model(data[0][0])  # a forward pass changes nothing
    op.torch_matmat(V)
    assert calls == []
    sgd_step(model, loss_fn, data)
    op.torch_matmat(V)
    op.torch_matmat(V)
    assert calls == [1]  # once per change, however many products follow


def test_recompute_is_idempotent_over_several_steps():
    model, loss_fn, data = make_problem("cnn", "mse")
    op = curvops.KFACOperator(model, loss_fn, data, on_stale="recompute")
    for _ in range(3):
        sgd_step(model, loss_fn, data, lr=0.05)
        op.trace()
    fresh = curvops.KFACOperator(model, loss_fn, data)
    torch.testing.assert_close(op.to_dense(), fresh.to_dense(), rtol=1e-12, atol=0)
