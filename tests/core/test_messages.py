"""The mistakes users make first: each gets one sentence saying what was wrong and what to
write instead; models whose ops lack a forward-mode rule or a second derivative still get
the curvatures PyTorch can differentiate (checked against dense float64 truth)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from models import make_problem
from oracles import dense_ggn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import curvops

ALL = [curvops.HessianOperator, curvops.GGNOperator, curvops.KFACOperator, curvops.EKFACOperator]


def _whole(data):
    return torch.cat([X for X, _ in data]), torch.cat([y for _, y in data])


# ---------------------------------------------------------------- data
@pytest.mark.parametrize("cls", ALL)
def test_one_pair_as_data(cls):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(
        TypeError, match=r"single \(X, y\) tuple.*wrap it in a list, data=\[\(X, y\)\]"
    ):
        cls(model, loss_fn, _whole(data))


@pytest.mark.parametrize("cls", ALL)
def test_tensor_dataset_as_data(cls):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    dataset = TensorDataset(*_whole(data))
    with pytest.raises(
        TypeError, match=r"TensorDataset, whose items are single points.*DataLoader\(dataset, batch"
    ):
        cls(model, loss_fn, dataset)
    cls(model, loss_fn, DataLoader(dataset, batch_size=4))  # as advised


def test_a_list_of_tensors_as_data():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(
        ValueError, match=r"batch 0 is a tensor of shape \(10, 4\).*data=\[\(X, y\)\]"
    ):
        curvops.GGNOperator(model, loss_fn, list(_whole(data)))


@pytest.mark.parametrize("cls", ALL)
def test_loader_yielding_dicts(cls):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    X, y = _whole(data)
    rows = [{"x": X[i], "labels": y[i]} for i in range(len(y))]
    pattern = r"batch 0 is a dict with keys \['labels', 'x'\].*\(inputs, targets\).*collate_fn"
    with pytest.raises(ValueError, match=pattern):
        cls(model, loss_fn, DataLoader(rows, batch_size=4))
    as_pairs = DataLoader(rows, batch_size=4, collate_fn=_pairs)  # as advised
    cls(model, loss_fn, as_pairs)


def _pairs(rows):
    return torch.stack([r["x"] for r in rows]), torch.stack([r["labels"] for r in rows])


# ---------------------------------------------------------------- options and targets
def test_blocks_as_a_flat_list_of_tensors():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    params = list(model.parameters())
    with pytest.raises(TypeError, match=r"blocks is a flat list.*blocks=\[\[p\] for p in params\]"):
        curvops.HessianOperator(model, loss_fn, data, blocks=params)
    op = curvops.HessianOperator(model, loss_fn, data, blocks=[[p] for p in params])
    assert len(op.block_slices) == len(params)


@pytest.mark.parametrize("cls", ALL)
def test_integer_targets_for_bce(cls):
    model, loss_fn, data = make_problem("mlp_tanh", "bce")
    ints = [(X, y.long()) for X, y in data]
    with pytest.raises(ValueError, match=r"floating-point targets.*torch.int64: pass y.float\(\)"):
        op = cls(model, loss_fn, ints)
        op.torch_matmat(torch.ones(op.shape[0], dtype=torch.float64))


# ---------------------------------------------------------------- no forward-mode rule
class Encoder(nn.Module):
    """nn.TransformerEncoderLayer in eval mode: its fused fast path has no forward AD."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.enc(x)).transpose(1, 2)


class Attention(nn.Module):
    """nn.MultiheadAttention in eval mode: its fast path (_native_multi_head_attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.att(x, x, x, need_weights=False)[0]).transpose(1, 2)


class Recurrent(nn.Module):
    """nn.LSTM: in float32 on CPU a fused kernel without forward AD."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0]).transpose(1, 2)


class RandomizedReLU(nn.Module):
    """F.rrelu(training=False) (a fixed slope): vmap has no rule for rrelu_with_noise."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(F.rrelu(self.a(x), training=False)).transpose(1, 2)


NO_FORWARD_RULE = [
    (Encoder, torch.float64),
    (Attention, torch.float64),
    (Recurrent, torch.float32),
    (RandomizedReLU, torch.float64),
]


def _sequence_data(dtype):
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(B, 5, 8, generator=gen).to(dtype), torch.randint(0, 3, (B, 5), generator=gen))
        for B in (4, 2)
    ]


def _ggn_truth(model, data):
    """The float64 GGN (jacrev) of a float64 copy, at the same parameter values."""
    data64 = [(X.double(), y) for X, y in data]
    return dense_ggn(copy.deepcopy(model).double(), nn.CrossEntropyLoss(), data64)


@pytest.mark.parametrize(
    ("cls", "dtype"), NO_FORWARD_RULE, ids=[c.__name__ for c, _ in NO_FORWARD_RULE]
)
@pytest.mark.parametrize("jvp", [None, "auto"])
@pytest.mark.parametrize("cache", [1024.0, 0.0], ids=["cache", "no_cache"])
def test_ggn_falls_back_to_reverse_mode(cls, dtype, jvp, cache):
    torch.manual_seed(0)
    model = cls().to(dtype).eval()
    data = _sequence_data(dtype)
    op = curvops.GGNOperator(model, nn.CrossEntropyLoss(), data, jvp=jvp, graph_cache_mib=cache)
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    expected = _ggn_truth(model, data) @ V.double()
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-11}
    torch.testing.assert_close(op.torch_matmat(V).double(), expected, **tol)
    torch.testing.assert_close(op.torch_matmat(V).double(), expected, **tol)  # and again
    assert op._reverse_jvp


def test_forward_mode_asked_for_names_the_fix():
    model = Attention().double().eval()
    op = curvops.GGNOperator(
        model, nn.CrossEntropyLoss(), _sequence_data(torch.float64), jvp="forward"
    )
    with pytest.raises(ValueError, match=r"forward-mode J v failed.*jvp='reverse'"):
        op.torch_matmat(torch.ones(op.shape[0], dtype=torch.float64))


# ---------------------------------------------------------------- no second derivative
def _hardsigmoid_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Hardsigmoid(), nn.Linear(6, 3)).double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    return model, loss_fn, data


@pytest.mark.parametrize("hvp", ["double_backward", "forward_over_reverse"])
def test_hessian_names_the_op_without_a_second_derivative(hvp):
    model, loss_fn, data = _hardsigmoid_problem()
    op = curvops.HessianOperator(model, loss_fn, data, hvp=hvp)
    pattern = r"no second derivative for aten::hardsigmoid .*GGNOperator.*work"
    with pytest.raises(ValueError, match=pattern):
        op.torch_matmat(torch.ones(op.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("jvp", [None, "auto", "forward"])
@pytest.mark.parametrize("cache", [1024.0, 0.0], ids=["cache", "no_cache"])
def test_ggn_works_without_a_second_derivative(jvp, cache):
    """Reverse-mode J v differentiates hardsigmoid's backward: forward mode is used."""
    model, loss_fn, data = _hardsigmoid_problem()
    op = curvops.GGNOperator(model, loss_fn, data, jvp=jvp, graph_cache_mib=cache)
    truth = dense_ggn(model, loss_fn, data)
    torch.testing.assert_close(op.to_dense(), truth, rtol=1e-10, atol=1e-12)
    kfac = curvops.KFACOperator(model, loss_fn, data)  # first derivatives only, too
    assert torch.isfinite(kfac.to_dense()).all()


def test_reverse_mode_asked_for_names_the_fix():
    model, loss_fn, data = _hardsigmoid_problem()
    op = curvops.GGNOperator(model, loss_fn, data, jvp="reverse")
    with pytest.raises(ValueError, match=r"reverse-mode J v failed.*hardsigmoid.*jvp='forward'"):
        op.torch_matmat(torch.ones(op.shape[0], dtype=torch.float64))
