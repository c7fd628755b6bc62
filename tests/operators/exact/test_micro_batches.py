"""micro_batch_size: every batch cut into pieces of at most m rows gives the same operator
(Hessian, GGN, MC and empirical Fisher), against the unsplit operator and dense float64
truth, with and without the graph cache; bad values and unsplittable batches are refused."""

import pytest
import torch
from models import make_problem
from oracles import dense_empirical_fisher, dense_ggn, dense_hessian
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import curvops
from curvops.core.data import Batch
from curvops.core.denominators import loss_denominator
from curvops.operators.exact.micro_batches import split_batch

EXACT = {
    "hessian": (curvops.HessianOperator, {}, dense_hessian),
    "ggn": (curvops.GGNOperator, {}, dense_ggn),
}
ALL = {
    **EXACT,
    "mc": (curvops.GGNOperator, {"mode": "mc", "mc_samples": 3, "seed": 7}, None),
    "empirical": (curvops.GGNOperator, {"mode": "empirical"}, None),
}
CACHES = [None, 0]  # the default budget, and the cache off


def _close(A, B, rtol=1e-10):
    scale = B.abs().max().clamp(min=1e-12)
    assert (A - B).abs().max() <= rtol * scale, float((A - B).abs().max())


def _V(P, k=3):
    return torch.randn(P, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _weighted_ce_problem():
    """The tanh MLP with CE(weight=, ignore_index=-100); rows 2, 3 of batch 0 ignored, so
    with m = 2 one piece has no loss terms."""
    model, _, data = make_problem("mlp_tanh", "ce")
    data[0][1][2:4] = -100
    data[1][1][0] = -100
    weight = torch.tensor([0.5, 2.0, 1.25], dtype=torch.float64)
    return model, nn.CrossEntropyLoss(weight=weight, ignore_index=-100), data


class TinyLM(nn.Module):
    """Token ids (B, S) -> logits (B, S, V), each position mixing the ones before it."""

    def __init__(self, vocab: int = 5, width: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.embed(ids)))
        steps = torch.arange(1, ids.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
        return self.head(h.cumsum(dim=1) / steps)


def _lm_problem(loss_fn):
    torch.manual_seed(0)
    model = TinyLM().double().eval()
    gen = torch.Generator().manual_seed(1)
    data = []
    for B in (5, 3, 2):
        ids = torch.randint(0, 5, (B, 4), generator=gen)
        labels = torch.where(torch.rand(B, 4, generator=gen) < 0.3, -100, ids)
        data.append((ids, labels))
    data[0][1][2:4] = -100  # a piece of 2 rows without any token that counts
    return model, loss_fn, data


class KeywordNet(nn.Module):
    """A Hugging Face-like model(**X): X = {"features", "mask", "scale"}, scale a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, features, mask, scale=1.0):
        return self.head(torch.tanh(self.body(features * mask) * scale))


class Positional(nn.Module):
    """The oracles' model(X) form of a KeywordNet, the constant scale fixed."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, X):
        return self.net(**X, scale=self.scale)


def _dict_problem():
    torch.manual_seed(0)
    model = KeywordNet().double()
    gen = torch.Generator().manual_seed(2)
    data = []
    for B in (5, 3, 2):
        X = {
            "features": torch.randn(B, 3, generator=gen, dtype=torch.float64),
            "mask": (torch.rand(B, 3, generator=gen) < 0.8).double(),
            "scale": 0.5,
        }
        data.append((X, torch.randint(0, 2, (B,), generator=gen)))
    return model, nn.CrossEntropyLoss(), data


def _check(kind, model, loss_fn, data, truth, m, cache, **kw):
    """The split operator against the unsplit one and the truth: matvec and matmat, twice
    (the second product replays the cached graphs)."""
    cls, options = ALL[kind][:2]
    whole = cls(model, loss_fn, data, graph_cache_mib=cache, **options, **kw)
    split = cls(model, loss_fn, data, graph_cache_mib=cache, micro_batch_size=m, **options, **kw)
    V = _V(split.shape[0])
    for _ in range(2):
        for M in (V[:, 0], V):
            result = split.torch_matmat(M)
            _close(result, whole.torch_matmat(M))
            if truth is not None:
                _close(result, truth @ M)
    return split


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("kind", list(EXACT))
def test_weighted_ignored_cross_entropy(kind, m, cache):
    model, loss_fn, data = _weighted_ce_problem()
    truth = EXACT[kind][2](model, loss_fn, data)
    split = _check(kind, model, loss_fn, data, truth, m, cache)
    if cache is None:  # every piece with loss terms cached under its (index, piece) key
        pieces = {b.key for b in split._batches()}
        assert set(split._cache.entries) == pieces and split._cache.complete
        assert len(pieces) > len(data)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("kind", ["mc", "empirical"])
def test_fisher_variants_are_piece_invariant(kind, cache):
    """MC labels are drawn per data point from its own content (``curvops.core.seeds``),
    so the MC Fisher is the same matrix however the batches are cut."""
    model, loss_fn, data = _weighted_ce_problem()
    _check(kind, model, loss_fn, data, None, 2, cache)


def test_empirical_fisher_against_dense_truth():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    truth = dense_empirical_fisher(model, loss_fn, data)
    _check("empirical", model, loss_fn, data, truth, 2, None)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("kind", list(EXACT))
@pytest.mark.parametrize("loss", ["causal", "masked"])
def test_token_losses_with_ignored_labels(loss, kind, cache):
    token_loss = curvops.CausalLMLoss() if loss == "causal" else curvops.MaskedLMLoss()
    model, loss_fn, data = _lm_problem(token_loss)
    truth = EXACT[kind][2](model, loss_fn, data)
    _check(kind, model, loss_fn, data, truth, 2, cache)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("kind", list(EXACT))
def test_dict_inputs_with_a_constant(kind, cache):
    model, loss_fn, data = _dict_problem()
    plain = [({k: v for k, v in X.items() if k != "scale"}, y) for X, y in data]
    truth = EXACT[kind][2](Positional(model, 0.5), loss_fn, plain)
    _check(kind, model, loss_fn, data, truth, 2, cache)


@pytest.mark.parametrize(
    ("loss", "reduction"), [("mse", "mean"), ("mse", "sum"), ("bce", "mean"), ("bce", "sum")]
)
def test_elementwise_losses(loss, reduction):
    model, loss_fn, data = make_problem("mlp_tanh", loss, reduction)
    _check("hessian", model, loss_fn, data, dense_hessian(model, loss_fn, data), 2, 0)
    _check("ggn", model, loss_fn, data, dense_ggn(model, loss_fn, data), 3, None)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("hessian", {"hvp": "forward_over_reverse"}),
        ("hessian", {"blocks": "layer"}),
        ("ggn", {"jvp": "forward"}),
        ("ggn", {"jvp": "reverse"}),
        ("ggn", {"jvp": "auto"}),
    ],
)
def test_other_product_paths(kind, options):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    _check(kind, model, loss_fn, data, None, 2, None, **options)


def test_gradient_and_dataloader():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    X, y = torch.cat([x for x, _ in data]), torch.cat([t for _, t in data])
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    whole = curvops.HessianOperator(model, loss_fn, data)
    split = curvops.HessianOperator(model, loss_fn, loader, micro_batch_size=3)
    _close(split.gradient(), whole.gradient())
    V = _V(whole.shape[0])
    for _ in range(3):
        _close(split.torch_matmat(V), whole.torch_matmat(V))
    assert split._cache.enabled and split._cache.complete  # the kept loader's pieces reused


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, 2.0, "2"])
def test_bad_values_are_refused(bad):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    for cls in (curvops.HessianOperator, curvops.GGNOperator):
        with pytest.raises(ValueError, match="micro_batch_size"):
            cls(model, loss_fn, data, micro_batch_size=bad)


@pytest.mark.parametrize(
    ("extra", "what"),
    [(torch.zeros(1, 3), "leading size 1"), (["a"] * 5, "without tensors"), (object(), "object")],
)
def test_unsplittable_batches_are_refused(extra, what):
    model, loss_fn, data = _dict_problem()
    data[0][0]["extra"] = extra
    wrapper, rows = _DictArgument(model), lambda X: X["features"].shape[0]
    with pytest.raises(ValueError, match=f"micro_batch_size=2 .*{what}"):
        curvops.HessianOperator(wrapper, loss_fn, data, batch_size_fn=rows, micro_batch_size=2)
    op = curvops.HessianOperator(wrapper, loss_fn, data, batch_size_fn=rows, micro_batch_size=5)
    op @ _V(op.shape[0], 1)[:, 0].numpy()  # batch 0 is not cut: nothing to refuse


class _DictArgument(nn.Module):
    """model(X) on a dict X that may hold keys the model ignores."""

    def __init__(self, net: KeywordNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, X):
        return self.net(X["features"], X["mask"], X["scale"])


def test_pieces_are_views_whose_denominators_add_up():
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0]), ignore_index=-100)
    count = loss_denominator(loss_fn)
    X = (torch.randn(5, 3), {"mask": torch.ones(5, 3), "c": 3, "t": torch.tensor(2.0)})
    y = torch.tensor([0, 2, -100, 1, 1])
    whole = Batch(X, y, 5, 4, count(y, 5))
    pieces = list(split_batch(whole, 2, count))
    assert [p.size for p in pieces] == [2, 2, 1]
    assert [p.key for p in pieces] == [(4, 0), (4, 1), (4, 2)]
    assert sum(p.denominator for p in pieces) == pytest.approx(whole.denominator)
    for p in pieces:
        assert p.whole is whole and p.X[1]["c"] == 3 and p.X[1]["t"] is X[1]["t"]
        assert p.X[0].untyped_storage().data_ptr() == X[0].untyped_storage().data_ptr()
    (alone,) = split_batch(whole, 5, count)
    assert alone is whole  # nothing to cut
