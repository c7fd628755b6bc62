"""One fixed matrix, or a clear refusal: randomness of any kind in the forward pass.

Every operator evaluates the loss of its first batch under two random states at
construction; a forward pass that draws random numbers (dropout modules, attention dropout,
F.dropout or scaled_dot_product_attention(dropout_p=) inside forward, RReLU in train mode,
stochastic depth, a Hugging Face model in train mode) is refused with the fix.
``check_deterministic=True`` compares two full data passes (KFAC / EKFAC: their factors).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import dense_ggn, dense_hessian
from torch import nn

import curvops

RANDOM = r"random.*model\.eval\(\)"


class FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(F.dropout(torch.tanh(self.a(x)), 0.3, training=self.training))


class SdpaDropout(nn.Module):
    """Self-attention written with F.scaled_dot_product_attention(dropout_p=...)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 3)

    def forward(self, x):  # x (B, S, 4) -> (B, 3, S)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        p = 0.2 if self.training else 0.0
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out(h).transpose(1, 2)


class StochasticDepth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.skip, self.b = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if not self.training or bool(torch.rand(()) > 0.5):
            h = h + self.skip(h)
        return self.b(h)


class RReLUNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 6), nn.RReLU(), nn.Linear(6, 3))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, dropout=0.5, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.attn(x, x, x, need_weights=False)[0]).transpose(1, 2)


def _data(model: nn.Module, n: int = 2):
    gen = torch.Generator().manual_seed(0)
    seq = isinstance(model, (SdpaDropout, Attention))
    shape = (5, 3, 4) if seq else (5, 4)
    y_shape = (5, 3) if seq else (5,)
    return [
        (
            torch.randn(*shape, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, y_shape, generator=gen),
        )
        for _ in range(n)
    ]


KRONECKER_OK = [FunctionalDropout, SdpaDropout, StochasticDepth, RReLUNet]
BUILDERS = {
    "hessian": lambda m, d: curvops.HessianOperator(m, nn.CrossEntropyLoss(), d),
    "ggn": lambda m, d: curvops.GGNOperator(m, nn.CrossEntropyLoss(), d),
    "ggn-mc": lambda m, d: curvops.GGNOperator(m, nn.CrossEntropyLoss(), d, mode="mc"),
    "ggn-empirical": lambda m, d: curvops.GGNOperator(
        m, nn.CrossEntropyLoss(), d, mode="empirical"
    ),
    "kfac": lambda m, d: curvops.KFACOperator(m, nn.CrossEntropyLoss(), d),
    "ekfac": lambda m, d: curvops.EKFACOperator(m, nn.CrossEntropyLoss(), d),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("cls", [*KRONECKER_OK, Attention], ids=lambda c: c.__name__)
def test_random_forward_is_refused(cls, kind):
    if cls is Attention and kind in ("kfac", "ekfac"):
        pytest.skip("KFAC refuses nn.MultiheadAttention's packed weights before any pass")
    torch.manual_seed(0)
    model = cls().double().train()
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match=RANDOM):
        BUILDERS[kind](model, _data(model))
    assert torch.equal(torch.random.get_rng_state(), state)  # the user's RNG is untouched


@pytest.mark.parametrize("cls", [*KRONECKER_OK, Attention], ids=lambda c: c.__name__)
def test_the_same_models_in_eval_mode_are_exact(cls):
    torch.manual_seed(0)
    model = cls().double().eval()
    data, loss_fn = _data(model), nn.CrossEntropyLoss()
    H = curvops.HessianOperator(model, loss_fn, data).to_dense()
    torch.testing.assert_close(H, dense_hessian(model, loss_fn, data), rtol=1e-9, atol=1e-11)
    G = curvops.GGNOperator(model, loss_fn, data).to_dense()
    torch.testing.assert_close(G, dense_ggn(model, loss_fn, data), rtol=1e-9, atol=1e-11)


def test_hugging_face_model_in_train_mode_is_refused():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.1
    )
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(config).double().train()

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            return self.lm(input_ids=ids).logits.transpose(1, 2)

    ids = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=RANDOM):
        curvops.GGNOperator(Logits(), nn.CrossEntropyLoss(), [(ids, ids)])


class NoisyOnSecondBatch(nn.Module):
    """Random only on batches of 3 points: the construction probe (first batch) misses it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if x.shape[0] == 3:
            h = h * (1 + 0.1 * torch.rand_like(h))
        return self.b(h)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_check_deterministic_compares_two_data_passes(kind):
    torch.manual_seed(0)
    model = NoisyOnSecondBatch().double()
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,)))
        for n in (5, 3)
    ]
    loss_fn = nn.CrossEntropyLoss()
    options = {"mode": kind[4:]} if kind.startswith("ggn-") else {}
    cls = {
        "hessian": curvops.HessianOperator,
        "ggn": curvops.GGNOperator,
        "kfac": curvops.KFACOperator,
        "ekfac": curvops.EKFACOperator,
    }[kind.split("-")[0]]
    cls(model, loss_fn, data, **options)  # the probe sees batch 0 only: built
    with pytest.raises(RuntimeError, match="not deterministic"):
        cls(model, loss_fn, data, check_deterministic=True, **options)


def test_check_deterministic_accepts_a_deterministic_model():
    torch.manual_seed(0)
    model = FunctionalDropout().double().eval()
    for cls in (curvops.HessianOperator, curvops.KFACOperator, curvops.EKFACOperator):
        cls(model, nn.CrossEntropyLoss(), _data(model), check_deterministic=True)


def _big_batches(ignored_head: int = 0):
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    y[:ignored_head] = -100
    return [(X, y), (X.flip(0), y.flip(0))]


def test_the_probe_cuts_the_first_batch_and_still_refuses_dropout():
    """Batches of 40: the probe runs on the first 16 points and finds the dropout."""
    model = FunctionalDropout().double().train()
    with pytest.raises(ValueError, match=RANDOM):
        curvops.GGNOperator(model, nn.CrossEntropyLoss(), _big_batches())


class NumpyNoise(nn.Module):
    """Random through numpy: torch's generators never move, only the loss shows it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.rng = np.random.default_rng(0)

    def forward(self, x):
        noise = torch.as_tensor(self.rng.normal(size=(x.shape[0], 6)), dtype=x.dtype)
        return self.b(torch.tanh(self.a(x)) + noise)


def test_a_cut_whose_labels_are_all_ignored_falls_back_to_the_whole_batch():
    """The first 16 targets ignored: the cut's loss is 0/0 under both states (equal NaNs);
    the whole batch's two losses differ."""
    with pytest.raises(ValueError, match="differs under two random states"):
        curvops.HessianOperator(NumpyNoise().double(), nn.CrossEntropyLoss(), _big_batches(20))
