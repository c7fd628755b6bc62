"""The construction's shortcuts change nothing but cost: cross-entropy's C − 1 square-root
columns, outputs kept as gradient edges, G and A summed in place, x̂ in b's layout."""

import gc
import weakref

import pytest
import torch
from kfac_models import block_diagonal
from oracles import dense_ggn
from torch import nn

from curvops.core.data import Batch
from curvops.core.losses import output_loss
from curvops.operators.kronecker import capture
from curvops.operators.kronecker.capture import without_null_column
from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.factors import add_gram, gram
from curvops.operators.kronecker.kfac import KFACOperator


class Mixer(nn.Module):
    """Token mixing over a transposed LayerNorm output (its output gradients are strided)."""

    def __init__(self, seq: int = 3, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed, self.norm1 = nn.Linear(2, dim), nn.LayerNorm(dim)
        self.tokens, self.norm2 = nn.Linear(seq, seq), nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, X):
        h = self.embed(X)
        h = h + self.tokens(self.norm1(h).transpose(1, 2)).transpose(1, 2)
        return self.head(torch.tanh(self.norm2(h)).mean(dim=1))


def _mixer_problem():
    torch.manual_seed(0)
    model = Mixer().double()
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):  # not the unit / zero init
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    X = torch.randn(6, 3, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    return model, nn.CrossEntropyLoss(), [(X[:4], y[:4]), (X[4:], y[4:])]


@pytest.mark.parametrize(
    "loss_fn,shape",
    [
        (nn.CrossEntropyLoss(), (5, 4)),
        (nn.CrossEntropyLoss(weight=torch.rand(6, dtype=torch.float64)), (3, 6, 7)),
        (nn.CrossEntropyLoss(label_smoothing=0.2, ignore_index=1), (4, 5)),
        (nn.CrossEntropyLoss(), (4, 2)),
    ],
)
def test_without_null_column_keeps_the_hessian(loss_fn, shape):
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(*shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    U = output_loss(loss_fn).hessian_sqrt(f, y)
    R = without_null_column(U, f)
    assert R.shape == (shape[1] - 1, *U.shape[1:])
    gram_of = lambda V: torch.einsum("kbc...,kbd...->bcd...", V, V)  # noqa: E731
    torch.testing.assert_close(gram_of(R), gram_of(U), atol=1e-14, rtol=0)


@pytest.mark.parametrize("cls", [KFACOperator, EKFACOperator])
def test_c_minus_one_columns_give_the_c_column_operator(cls, monkeypatch):
    model, loss_fn, data = _mixer_problem()
    fast = cls(model, loss_fn, data).to_dense()
    monkeypatch.setattr(capture, "without_null_column", lambda U, f: U)
    full = cls(model, loss_fn, data).to_dense()
    torch.testing.assert_close(fast, full, atol=1e-13 * float(full.abs().max()), rtol=0)


def test_layernorm_blocks_with_strided_output_grads_are_exact():
    model, loss_fn, data = _mixer_problem()
    op = KFACOperator(model, loss_fn, data)
    blocks = [[op.params[i] for i in b] for b in op.layout.blocks]
    exact = block_diagonal(dense_ggn(model, loss_fn, data, op.params), blocks)
    K = op.to_dense()
    checked = 0
    for name, sl in zip(op.block_names, op.block_slices):
        if op.structures[name] == "exact":
            torch.testing.assert_close(K[sl, sl], exact[sl, sl], atol=1e-12, rtol=1e-9)
            checked += 1
    assert checked == 4  # weight and bias of norm1 (transposed output) and norm2


@pytest.mark.parametrize("n,dim", [(7, 3), (40, 511), (33, 512), (9, 1030)])
def test_add_gram_sums_in_place(n, dim):
    gen = torch.Generator().manual_seed(dim)
    X = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    big = torch.randn(dim + 2, dim + 2, generator=gen, dtype=torch.float64)
    before = big.clone()
    view = big[1 : dim + 1, 1 : dim + 1]  # a strided block, as G[rows, rows]
    assert add_gram(view, X) is view
    torch.testing.assert_close(big[1 : dim + 1, 1 : dim + 1], before[1:-1, 1:-1] + X.T @ X)
    torch.testing.assert_close(big[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(gram(X), X.T @ X, rtol=1e-12, atol=1e-12)


def test_recorded_outputs_are_not_kept_alive():
    """A layer output that no backward node saves (tanh saves its own output) is freed after
    the forward pass: the capture keeps its gradient edge only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    op = KFACOperator(model, nn.MSELoss(), [(torch.randn(5, 3), torch.randn(5, 2))])
    seen = []
    handle = model[0].register_forward_hook(lambda m, i, out: seen.append(weakref.ref(out)))
    X, y = torch.randn(5, 3), torch.randn(5, 2)
    bp = op._collector(Batch(X, y, 5, 0, 5.0), 1.0)
    handle.remove()
    gc.collect()
    assert seen and seen[0]() is None
    grads = next(bp.chunks)  # the edges still give the output gradients
    assert grads[0].shape == (2, 5, 1, 4)
