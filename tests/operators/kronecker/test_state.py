"""Saved KFAC / EKFAC state: exact round trips, refused settings, refused corrupt factors."""

import io

import pytest
import torch
from kfac_models import make

from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator

OPS = [KFACOperator, EKFACOperator]


def _saved(op) -> dict:
    """op's state through torch.save / torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(op.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("cls", OPS)
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        pytest.param("mlp", {}, id="mlp"),
        pytest.param("mlp", {"fisher": "mc", "mc_samples": 2, "seed": 3}, id="mlp-mc"),
        pytest.param("cnn", {"separate_weight_and_bias": False}, id="cnn-joint"),
        pytest.param("seq", {"approx": "reduce"}, id="seq-reduce"),
    ],
)
def test_round_trip_is_exact(cls, name, kw):
    model, loss_fn, data = make(name, "mse")
    op = cls(model, loss_fn, data, **kw)
    other_model, _, other_data = make(name, "mse", seed=5)  # same shapes, other values
    other = cls(other_model, loss_fn, other_data, **kw)
    assert not torch.equal(other.to_dense(), op.to_dense())
    other.load_state_dict(_saved(op))
    assert torch.equal(other.to_dense(), op.to_dense())
    assert other.trace() == op.trace()
    v = torch.ones(op.shape[0], dtype=torch.float64)
    assert torch.equal(other.inverse(0.1).torch_matmat(v), op.inverse(0.1).torch_matmat(v))
    assert not other.is_stale


@pytest.mark.parametrize("cls", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("name", "sizes"), [("mlp", (1,)), ("cnn", (5, 3, 2))], ids=["mlp-1pt", "cnn"]
)
def test_genuine_states_pass_the_checks(cls, dtype, name, sizes):
    """Round-off (float32, rank-deficient factors from one data point) is not corruption."""
    model, loss_fn, data = make(name, "ce", sizes=sizes)
    model = model.to(dtype)
    data = [(X.to(dtype), y) for X, y in data]
    op = cls(model, loss_fn, data)
    before = op.to_dense()
    op.load_state_dict(_saved(op))
    assert torch.equal(op.to_dense(), before)


SETTINGS = [
    (OPS, "fisher", {"fisher": "type2"}, {"fisher": "empirical"}),
    (OPS, "mc_samples", {"fisher": "mc", "mc_samples": 1}, {"fisher": "mc", "mc_samples": 2}),
    (OPS, "seed", {"fisher": "mc", "seed": 0}, {"fisher": "mc", "seed": 1}),
    (OPS, "approx", {"approx": "expand"}, {"approx": "reduce"}),
    (OPS, "separate_weight_and_bias", {}, {"separate_weight_and_bias": False}),
    (OPS, "num_data", {}, {"data": lambda data: data + data}),
    ([EKFACOperator], "correction", {}, {"correction": "per_example"}),
    ([EKFACOperator], "eigenbasis", {}, {"eigenbasis": "qr"}),
]


@pytest.mark.parametrize(
    ("cls", "setting", "saved_kw", "loader_kw"),
    [
        pytest.param(cls, *rest, id=f"{cls.__name__}-{rest[0]}")
        for classes, *rest in SETTINGS
        for cls in classes
    ],
)
def test_each_mismatched_setting_is_refused(cls, setting, saved_kw, loader_kw):
    model, loss_fn, data = make("seq", "mse")
    state = _saved(cls(model, loss_fn, data, **saved_kw))
    kw = dict(loader_kw)
    loader = cls(model, loss_fn, kw.pop("data", lambda d: d)(data), **kw)
    before = loader.to_dense()
    saved, mine = state[setting], getattr(loader, setting)
    with pytest.raises(
        ValueError, match=rf"saved state has {setting}={saved!r}, this operator {setting}={mine!r}"
    ):
        loader.load_state_dict(state)
    assert torch.equal(loader.to_dense(), before)  # nothing was loaded


@pytest.mark.parametrize("cls", OPS)
def test_sampling_settings_matter_only_to_mc(cls):
    model, loss_fn, data = make("mlp", "ce")
    op = cls(model, loss_fn, data, mc_samples=1, seed=0)  # type-2: no sampling
    other = cls(model, loss_fn, data, mc_samples=3, seed=7)
    other.load_state_dict(_saved(op))
    assert torch.equal(other.to_dense(), op.to_dense())


@pytest.mark.parametrize("cls", OPS)
def test_missing_setting_is_refused(cls):
    model, loss_fn, data = make("mlp", "ce")
    op = cls(model, loss_fn, data)
    state = _saved(op)
    del state["approx"]
    with pytest.raises(ValueError, match="saved state has no setting 'approx'"):
        op.load_state_dict(state)


def _nan(t):
    t = t.clone(memory_format=torch.contiguous_format)
    t.view(-1)[1] = float("nan")
    return t


def _asymmetric(t):
    t = t.clone()
    t[0, 1] += 0.5 * float(t.abs().max())
    return t


def _indefinite(t):
    e = torch.zeros(t.shape[0], dtype=t.dtype)
    e[0] = 1.0
    return t - 3 * float(torch.linalg.eigvalsh(t)[-1]) * torch.outer(e, e)


def _not_orthonormal(t):
    t = t.clone()
    t[:, 0] = t[:, 1]
    return t


def _negative(t):
    t = t.clone(memory_format=torch.contiguous_format)
    t.view(-1)[0] = -1e-3
    return t


def _trimmed(t):
    return t[:-1, :-1]


def _empty(t):
    return t[:, :0]


def _scaled(t):
    return 1.01 * t


def _as_list(t):
    return t.tolist()


def _as_int(t):
    return t.long()


CORRUPTIONS = [
    (OPS, "G", _nan, "saved factor G holds NaN or inf"),
    (OPS, "A", _nan, "saved factor A holds NaN or inf"),
    (OPS, "A", _asymmetric, "saved factor A is not symmetric"),
    (OPS, "G", _asymmetric, "saved factor G is not symmetric"),
    (OPS, "G", _indefinite, "saved factor G is not positive semi-definite"),
    (OPS, "A", _indefinite, "saved factor A is not positive semi-definite"),
    (OPS, "A", _trimmed, r"saved factor A has shape \(4, 4\), the model needs \(5, 5\)"),
    (OPS, "G", _as_list, "saved factor G is a list, not a tensor"),
    (OPS, "G", _as_int, "saved factor G has dtype torch.int64"),
    ([EKFACOperator], "Q_G", _not_orthonormal, "saved factor Q_G is not an orthonormal basis"),
    ([EKFACOperator], "Q_A", _scaled, "saved factor Q_A is not an orthonormal basis"),
    ([EKFACOperator], "Q_A", _nan, "saved factor Q_A holds NaN or inf"),
    ([EKFACOperator], "E0", _negative, "saved factor E0 has negative entries"),
    ([EKFACOperator], "E1", _nan, "saved factor E1 holds NaN or inf"),
    ([EKFACOperator], "E1", _empty, r"saved factor E1 has shape \(3, 0\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "key", "corrupt", "message"),
    [
        pytest.param(cls, key, fn, msg, id=f"{cls.__name__}-{key}{fn.__name__}")
        for classes, key, fn, msg in CORRUPTIONS
        for cls in classes
    ],
)
def test_each_corrupt_factor_is_refused_naming_layer_and_factor(cls, key, corrupt, message):
    model, loss_fn, data = make("mlp", "ce")  # layer '2': Linear(5, 3), G (3, 3), A (5, 5)
    op = cls(model, loss_fn, data)
    state = _saved(op)
    state["layers"]["2"][key] = corrupt(state["layers"]["2"][key])
    before = op.to_dense()
    with pytest.raises(ValueError, match=rf"layer '2': {message}"):
        op.load_state_dict(state)
    assert torch.equal(op.to_dense(), before)  # nothing was loaded


@pytest.mark.parametrize("cls", OPS)
def test_extra_or_missing_factors_are_refused(cls):
    model, loss_fn, data = make("mlp", "ce")
    op = cls(model, loss_fn, data)
    state = _saved(op)
    state["layers"]["0"]["E2"] = torch.ones(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer '0': saved factors \['E2'\] are not factors"):
        op.load_state_dict(state)
    state = _saved(op)
    del state["layers"]["0"]["A"]
    with pytest.raises(ValueError, match="layer '0': saved factor A is missing"):
        op.load_state_dict(state)
