"""Weight tying: a module called several times, a parameter shared by several modules (of
one kind: one Kronecker block over all uses; of different kinds: a fallback block)."""

import copy

import pytest
import torch
from kfac_models import block_diagonal
from oracles import dense_ggn
from torch import nn

from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator


def _dense_blocks(op, model, loss_fn, data):
    blocks = [[op.params[i] for i in b] for b in op.layout.blocks]
    return block_diagonal(dense_ggn(model, loss_fn, data, op.params), blocks)


class _TwoCalls(nn.Module):
    """One Linear applied to each of two tokens in its own call: (B, 2, 3) -> (B, 2, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return torch.stack([self.lin(x[:, 0]), self.lin(x[:, 1])], dim=1)


def _mse_data(model, sizes=(3, 2)):
    gen = torch.Generator().manual_seed(1)
    data = []
    for B in sizes:
        X = torch.randn(B, 2, 3, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            y = torch.randn(model(X).shape, generator=gen, dtype=torch.float64)
        data.append((X, y))
    return data


@pytest.mark.parametrize("separate", [True, False])
def test_module_called_twice_sums_its_uses_exact_where_kfac_is(separate):
    torch.manual_seed(0)
    model = _TwoCalls().double()
    data = _mse_data(model)
    op = KFACOperator(model, nn.MSELoss(), data, separate_weight_and_bias=separate)
    G = _dense_blocks(op, model, nn.MSELoss(), data)
    torch.testing.assert_close(op.to_dense(), G, atol=1e-10, rtol=1e-10)  # one layer, MSE
    one_call = KFACOperator(
        nn.Sequential(model.lin), nn.MSELoss(), data, separate_weight_and_bias=separate
    )
    torch.testing.assert_close(op.to_dense(), one_call.to_dense())  # = positions of one call


class _SharedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_weight_shared_by_two_modules_sums_their_factors_and_ekfac_keeps_the_trace():
    torch.manual_seed(0)
    untied = _SharedWeight().double()
    with torch.no_grad():
        untied.b.weight.copy_(untied.a.weight)
    tied = copy.deepcopy(untied)
    tied.b.weight = tied.a.weight
    data = [(torch.randn(B, 3, dtype=torch.float64), torch.randint(0, 2, (B,))) for B in (4, 3)]
    loss_fn = nn.CrossEntropyLoss()
    ref = {n: (G, A) for n, G, A in KFACOperator(untied, loss_fn, data).factors}
    got = {n: (G, A) for n, G, A in KFACOperator(tied, loss_fn, data).factors}
    assert set(got) == {"a.weight", "a.bias", "b.bias", "head"}
    torch.testing.assert_close(got["a.weight"][0], ref["a"][0] + ref["b"][0])
    torch.testing.assert_close(got["a.weight"][1], (ref["a"][1] + ref["b"][1]) / 2)
    torch.testing.assert_close(got["a.bias"][0], ref["a"][0])
    torch.testing.assert_close(got["b.bias"][0], ref["b"][0])
    ekfac = EKFACOperator(tied, loss_fn, data)
    G = _dense_blocks(ekfac, tied, loss_fn, data)
    E = ekfac.to_dense()
    for sl in ekfac.block_slices:  # E: the exact diagonal in KFAC's basis, over both uses
        assert float(E[sl, sl].trace()) == pytest.approx(float(G[sl, sl].trace()), rel=1e-10)


class _TiedLM(nn.Module):
    """Embedding tied with the Linear head (GPT-2 style)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 3)
        self.mix = nn.Linear(3, 3)
        self.head = nn.Linear(3, 6, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids)))).transpose(1, 2)


def test_embedding_tied_with_a_linear_head_gets_its_exact_block():
    torch.manual_seed(0)
    model = _TiedLM().double()
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randint(0, 6, (B, 4), generator=gen), torch.randint(0, 6, (B, 4), generator=gen))
        for B in (3, 2)
    ]
    loss_fn = nn.CrossEntropyLoss()
    for cls in (KFACOperator, EKFACOperator):
        op = cls(model, loss_fn, data)
        assert op.structures["embed.weight"] == "exact"
        reason = op.fallback_reasons["embed.weight"]
        assert "Embedding 'embed'" in reason and "Linear 'head'" in reason
        G = _dense_blocks(op, model, loss_fn, data)
        sl = op.block_slices[op.block_names.index("embed.weight")]
        torch.testing.assert_close(op.to_dense()[sl, sl], G[sl, sl], atol=1e-12, rtol=1e-10)
    diag = KFACOperator(model, loss_fn, data, fallback="diagonal")
    assert diag.structures["embed.weight"] == "diagonal"
    with pytest.raises(ValueError, match="'embed.weight'.*shared by Embedding 'embed'"):
        KFACOperator(model, loss_fn, data, fallback="error")


class _Functional(nn.Module):
    """Calls its Linear, and also multiplies the Linear's weight outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) + x @ self.lin.weight.T


def test_parameter_used_where_no_hook_sees_it_is_refused():
    model = _Functional().double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 3, (4,)))]
    with pytest.raises(ValueError, match="'lin.weight'.*used where curvops sees no call"):
        KFACOperator(model, nn.CrossEntropyLoss(), data)
    params = [model.lin.bias]  # the bias is accounted for
    assert KFACOperator(model, nn.CrossEntropyLoss(), data, params=params).shape == (3, 3)


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)
        self.norm = nn.LayerNorm(3)

    def forward(self, x):
        return self.used(x)


def test_modules_never_called_get_zero_blocks():
    model = _Unused().double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,)))]
    op = KFACOperator(model, nn.CrossEntropyLoss(), data)
    K = op.to_dense()
    for name, sl in zip(op.block_names, op.block_slices):
        if not name.startswith("used."):
            assert float(K[sl, sl].abs().max()) == 0.0
    assert op.structures["norm.weight"] == "exact"
