"""Saved state of the new block kinds: grouped factors, an embedding's diagonal A, forward-
only's diagonal G, exact and diagonal fallback blocks — exact round trips, corruption refused."""

import io

import pytest
import torch
from torch import nn

from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator

OPS = [KFACOperator, EKFACOperator]


class _Mixed(nn.Module):
    """Embedding -> grouped Conv1d -> LayerNorm -> Linear: every kind of block."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4, padding_idx=0)
        self.conv = nn.Conv1d(4, 4, 3, padding=1, groups=2)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        h = torch.tanh(self.conv(self.embed(ids).transpose(1, 2))).transpose(1, 2)
        return self.head(self.norm(h).mean(1))


def _problem(seed=0):
    torch.manual_seed(seed)
    model = _Mixed().double()
    gen = torch.Generator().manual_seed(seed + 1)
    data = [
        (torch.randint(0, 6, (B, 5), generator=gen), torch.randint(0, 3, (B,), generator=gen))
        for B in (3, 2)
    ]
    return model, nn.CrossEntropyLoss(), data


def _saved(op) -> dict:
    buf = io.BytesIO()
    torch.save(op.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


KINDS = [{}, {"fallback": "diagonal"}, {"fisher": "forward-only"}]


@pytest.mark.parametrize("cls", OPS)
@pytest.mark.parametrize("kw", KINDS, ids=["default", "diagonal", "forward-only"])
def test_round_trip_of_every_block_kind_is_exact(cls, kw):
    model, loss_fn, data = _problem()
    op = cls(model, loss_fn, data, **kw)
    other_model, _, other_data = _problem(seed=5)
    other = cls(other_model, loss_fn, other_data, **kw)
    assert not torch.equal(other.to_dense(), op.to_dense())
    other.load_state_dict(_saved(op))
    assert torch.equal(other.to_dense(), op.to_dense())
    assert other.logdet(0.1) == op.logdet(0.1)


def test_saved_keys_say_each_factor_kind():
    model, loss_fn, data = _problem()
    layers = _saved(EKFACOperator(model, loss_fn, data))["layers"]
    assert set(layers["embed"]) == {"G", "A_diag", "Q_G", "E0"}  # Q_A = I: not saved
    assert layers["conv"]["G"].shape == (2, 2, 2) and layers["conv"]["A"].shape == (2, 6, 6)
    assert layers["conv"]["Q_A"].shape == (2, 6, 6) and layers["conv"]["E0"].shape == (2, 2, 6)
    assert set(layers["norm.weight"]) == {"F"}
    diag = _saved(KFACOperator(model, loss_fn, data, fallback="diagonal"))["layers"]
    assert set(diag["norm.weight"]) == {"F_diag"}
    fo = _saved(KFACOperator(model, loss_fn, data, fisher="forward-only"))["layers"]
    assert set(fo["head"]) == {"G_diag", "A"}


def _negative(t):
    t = t.clone()
    t.view(-1)[1] = -1.0
    return t


def _asymmetric(t):
    t = t.clone()
    t[..., 0, 1] += 1.0
    return t


def _not_orthonormal(t):
    t = t.clone()
    t[-1, :, 0] = t[-1, :, 1]
    return t


CORRUPTIONS = [
    ({}, "embed", "A_diag", _negative, "saved factor A_diag has negative entries"),
    ({}, "conv", "G", _asymmetric, "saved factor G is not symmetric"),
    ({}, "norm.weight", "F", _asymmetric, "saved factor F is not symmetric"),
    (
        {"fallback": "diagonal"},
        "norm.weight",
        "F_diag",
        _negative,
        "saved factor F_diag has negative",
    ),
    ({"fisher": "forward-only"}, "head", "G_diag", _negative, "saved factor G_diag has negative"),
]


@pytest.mark.parametrize(("kw", "layer", "key", "corrupt", "message"), CORRUPTIONS)
def test_corrupt_factors_of_the_new_kinds_are_refused(kw, layer, key, corrupt, message):
    model, loss_fn, data = _problem()
    op = KFACOperator(model, loss_fn, data, **kw)
    state = _saved(op)
    state["layers"][layer][key] = corrupt(state["layers"][layer][key])
    before = op.to_dense()
    with pytest.raises(ValueError, match=rf"'{layer}': {message}"):
        op.load_state_dict(state)
    assert torch.equal(op.to_dense(), before)


def test_grouped_basis_not_orthonormal_and_other_fallback_mode_are_refused():
    model, loss_fn, data = _problem()
    op = EKFACOperator(model, loss_fn, data)
    state = _saved(op)
    state["layers"]["conv"]["Q_A"] = _not_orthonormal(state["layers"]["conv"]["Q_A"])
    with pytest.raises(ValueError, match="'conv': saved factor Q_A is not an orthonormal"):
        op.load_state_dict(state)
    diag = KFACOperator(model, loss_fn, data, fallback="diagonal")
    with pytest.raises(ValueError, match="fallback='auto', this operator fallback='diagonal'"):
        diag.load_state_dict(_saved(KFACOperator(model, loss_fn, data)))
