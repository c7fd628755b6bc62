"""The whole-data loss for every reduction a torch loss does: class weights, ignore_index,
padded sequences, BCE weight / pos_weight, batchmean; refusals; empty batches.

Ground truth is dense float64 over the WHOLE data set in one batch (sequences padded to one
length with ignored targets: the sequence model treats tokens independently), with the
loss's own reduction; the operators see batches of 4, 3 and 1 points. Loss terms' weights
are frequency weights (a term of weight ω counts as ω copies, an ignored one as none), so
the empirical Fisher's truth is c Σ_n g_n g_nᵀ, g_n the gradient of point n's loss with √ω
weights, c = 1/D (the loss's whole-data denominator) or 1 for "sum".
KFAC is exact when every layer sees one input for all points and positions (G ⊗ x xᵀ);
EKFAC's trace is the block-diagonal GGN's trace for any inputs (E: its diagonal in a basis).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from kfac_models import dense_block_ggn
from models import SequenceNet
from oracles import (
    dense_ggn,
    dense_gradient,
    dense_hessian,
    dense_point_outer_products,
)
from torch import nn

import curvops

SIZES = (4, 3, 1)
W = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)  # class weights
BCE_W = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
POS_W = torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)
CLOSE = {"rtol": 1e-9, "atol": 1e-11}


def _sqrt_pos_weight_bce(f, y):
    """√ω BCE(f, ỹ), ω = p y + 1 − y, ỹ = p y / ω: pos_weight BCE as weights ω of BCE terms."""
    omega = POS_W * y + 1 - y
    return nn.BCEWithLogitsLoss(weight=omega.sqrt(), reduction="sum")(f, POS_W * y / omega)


class Variant(NamedTuple):
    loss_fn: nn.Module
    targets: str  # "labels", "ignored" (every third -100), "binary", "soft", "real"
    sqrt_loss: object  # the summed loss with √ω weights (empirical truth), or None


VARIANTS = {
    "ce_weight": Variant(
        nn.CrossEntropyLoss(weight=W), "labels", nn.CrossEntropyLoss(W.sqrt(), reduction="sum")
    ),
    "ce_ignore": Variant(nn.CrossEntropyLoss(), "ignored", nn.CrossEntropyLoss(reduction="sum")),
    "ce_ignore_2": Variant(  # a valid class as ignore_index: its targets are dropped
        nn.CrossEntropyLoss(ignore_index=2),
        "labels",
        nn.CrossEntropyLoss(ignore_index=2, reduction="sum"),
    ),
    "ce_weight_ignore_sum": Variant(
        nn.CrossEntropyLoss(weight=W, reduction="sum"),
        "ignored",
        nn.CrossEntropyLoss(W.sqrt(), reduction="sum"),
    ),
    "ce_weight_ignore_smoothing": Variant(
        nn.CrossEntropyLoss(weight=W, label_smoothing=0.2), "ignored", None
    ),
    "bce_weight": Variant(
        nn.BCEWithLogitsLoss(weight=BCE_W),
        "binary",
        nn.BCEWithLogitsLoss(weight=BCE_W.sqrt(), reduction="sum"),
    ),
    "bce_pos_weight": Variant(nn.BCEWithLogitsLoss(pos_weight=POS_W), "soft", _sqrt_pos_weight_bce),
    "mse_mean": Variant(nn.MSELoss(), "real", nn.MSELoss(reduction="sum")),
    "mse_sum": Variant(nn.MSELoss(reduction="sum"), "real", nn.MSELoss(reduction="sum")),
}
SAMPLED = [k for k in VARIANTS if k != "bce_pos_weight"]  # pos_weight: no MC Fisher
EMPIRICAL = [k for k, v in VARIANTS.items() if v.sqrt_loss is not None]


def _targets(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind in ("labels", "ignored"):
        y = torch.randint(0, 3, (n,), generator=gen)
        if kind == "ignored":
            y[::3] = -100  # batches of 4, 3, 1 keep 2, 2 and 1 targets: not B / N
        return y
    if kind == "binary":
        return torch.randint(0, 2, (n, 3), generator=gen).double()
    if kind == "soft":
        return torch.rand(n, 3, generator=gen, dtype=torch.float64)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64)


def _problem(name: str, same_inputs: bool = False):
    """(model 4-5-3, loss_fn, data in batches of 4, 3, 1); one input for all with same_inputs."""
    variant = VARIANTS[name]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(1)
    N = sum(SIZES)
    X = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    if same_inputs:
        X = X[:1].expand(N, 4).clone()
    y = _targets(variant.targets, N, gen)
    return model, variant.loss_fn, _split(X, y)


def _split(X, y, sizes=SIZES):
    out, start = [], 0
    for B in sizes:
        out.append((X[start : start + B], y[start : start + B]))
        start += B
    return out


def _c(loss_fn, model, data) -> float:
    """c = L_mean / L_sum over the whole data (1 / D), from torch itself; 1 for "sum"."""
    if loss_fn.reduction == "sum":
        return 1.0
    X = torch.cat([x for x, _ in data])
    y = torch.cat([t for _, t in data])
    summed = type(loss_fn)(**_kwargs(loss_fn), reduction="sum")
    with torch.no_grad():
        f = model(X)
        return float(loss_fn(f, y) / summed(f, y))


def _kwargs(loss_fn) -> dict:
    keys = {
        nn.CrossEntropyLoss: ("weight", "ignore_index", "label_smoothing"),
        nn.BCEWithLogitsLoss: ("weight", "pos_weight"),
    }.get(type(loss_fn), ())
    return {k: getattr(loss_fn, k) for k in keys}


def _rel(A: torch.Tensor, B: torch.Tensor) -> float:
    return float((A - B).norm() / B.norm())


def _mc_error(model, loss_fn, data, M: int, seed: int, G: torch.Tensor) -> float:
    op = curvops.GGNOperator(model, loss_fn, data, mode="mc", mc_samples=M, seed=seed)
    return _rel(op.to_dense(), G)


def _assert_mc_converges(model, loss_fn, data, G):
    """Unbiased mean of M i.i.d. terms: its error's std falls as 1/√M, from M = 1 to 1024 by
    32; we ask for at least 32 / 2.5 (the measured factors lie near 32) and under 6 %."""
    e1 = np.mean([_mc_error(model, loss_fn, data, 1, s, G) for s in range(3)])
    e1024 = _mc_error(model, loss_fn, data, 1024, 0, G)
    assert e1024 < 2.5 * e1 / np.sqrt(1024)
    assert e1024 < 0.06


# ---------------------------------------------------------------- flat outputs
@pytest.mark.parametrize("name", list(VARIANTS))
def test_hessian(name):
    model, loss_fn, data = _problem(name)
    op = curvops.HessianOperator(model, loss_fn, data)
    torch.testing.assert_close(op.to_dense(), dense_hessian(model, loss_fn, data), **CLOSE)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradient(name):
    model, loss_fn, data = _problem(name)
    for op in (
        curvops.HessianOperator(model, loss_fn, data),
        curvops.KFACOperator(model, loss_fn, data),
    ):
        torch.testing.assert_close(op.gradient(), dense_gradient(model, loss_fn, data), **CLOSE)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ggn_exact(name):
    model, loss_fn, data = _problem(name)
    op = curvops.GGNOperator(model, loss_fn, data)
    torch.testing.assert_close(op.to_dense(), dense_ggn(model, loss_fn, data), **CLOSE)


@pytest.mark.parametrize("name", EMPIRICAL)
def test_empirical_fisher(name):
    model, loss_fn, data = _problem(name)
    op = curvops.GGNOperator(model, loss_fn, data, mode="empirical")
    c = _c(loss_fn, model, data)
    truth = dense_point_outer_products(model, VARIANTS[name].sqrt_loss, data, c)
    torch.testing.assert_close(op.to_dense(), truth, **CLOSE)


@pytest.mark.parametrize("name", SAMPLED)
def test_mc_fisher_converges_to_the_ggn(name):
    model, loss_fn, data = _problem(name)
    _assert_mc_converges(model, loss_fn, data, dense_ggn(model, loss_fn, data))


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("separate", [True, False])
def test_kfac_exact_when_every_point_has_the_same_input(name, separate):
    model, loss_fn, data = _problem(name, same_inputs=True)
    op = curvops.KFACOperator(model, loss_fn, data, separate_weight_and_bias=separate)
    G = dense_block_ggn(model, loss_fn, data, separate)
    torch.testing.assert_close(op.to_dense(), G, **CLOSE)


@pytest.mark.parametrize("name", EMPIRICAL)
def test_empirical_kfac_exact_when_every_point_has_the_same_input(name):
    from kfac_models import block_diagonal, layer_blocks

    model, loss_fn, data = _problem(name, same_inputs=True)
    op = curvops.KFACOperator(model, loss_fn, data, fisher="empirical")
    blocks = layer_blocks(model)
    params = [p for b in blocks for p in b]
    c = _c(loss_fn, model, data)
    truth = dense_point_outer_products(model, VARIANTS[name].sqrt_loss, data, c, params)
    torch.testing.assert_close(op.to_dense(), block_diagonal(truth, blocks), **CLOSE)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ekfac_trace_is_the_block_ggn_trace(name):
    model, loss_fn, data = _problem(name)
    op = curvops.EKFACOperator(model, loss_fn, data)
    truth = float(torch.trace(dense_block_ggn(model, loss_fn, data)))
    assert op.trace() == pytest.approx(truth, rel=1e-10)
    assert float(torch.trace(op.to_dense())) == pytest.approx(truth, rel=1e-10)


# ---------------------------------------------------------------- padded sequences
SEQ_LENGTHS = (5, 3, 4)  # per batch: unequal lengths, each padded with -100 labels


def _sequences(same_inputs: bool = False, ignore_index: int = -100):
    """SequenceNet (B, S, 3) -> (B, 3, S); per point a random length, -100 after it."""
    torch.manual_seed(0)
    model = SequenceNet(3).double()
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, generator=gen, dtype=torch.float64)
    data = []
    for B, S in zip(SIZES, SEQ_LENGTHS):
        X = torch.randn(B, S, 3, generator=gen, dtype=torch.float64)
        if same_inputs:
            X = x0.expand(B, S, 3).clone()
        y = torch.randint(0, 3, (B, S), generator=gen)
        lengths = torch.randint(1, S + 1, (B,), generator=gen)
        y[torch.arange(S).expand(B, S) >= lengths[:, None]] = ignore_index
        data.append((X, y))
    return model, nn.CrossEntropyLoss(ignore_index=ignore_index), data


def _padded(data, ignore_index: int = -100):
    """The whole data in one batch, padded to the longest sequence with ignored targets."""
    S = max(X.shape[1] for X, _ in data)
    Xs, ys = [], []
    for X, y in data:
        pad = S - X.shape[1]
        Xs.append(torch.cat([X, X.new_zeros(X.shape[0], pad, 3)], dim=1))
        ys.append(torch.cat([y, y.new_full((y.shape[0], pad), ignore_index)], dim=1))
    return [(torch.cat(Xs), torch.cat(ys))]


@pytest.mark.parametrize("ignore_index", [-100, 7])
def test_padded_sequences_hessian_ggn_and_gradient(ignore_index):
    model, loss_fn, data = _sequences(ignore_index=ignore_index)
    whole = _padded(data, ignore_index)
    H = curvops.HessianOperator(model, loss_fn, data)
    torch.testing.assert_close(H.to_dense(), dense_hessian(model, loss_fn, whole), **CLOSE)
    torch.testing.assert_close(H.gradient(), dense_gradient(model, loss_fn, whole), **CLOSE)
    G = curvops.GGNOperator(model, loss_fn, data).to_dense()
    torch.testing.assert_close(G, dense_ggn(model, loss_fn, whole), **CLOSE)


def test_padded_sequences_empirical_and_mc_fisher():
    model, loss_fn, data = _sequences()
    whole = _padded(data)
    op = curvops.GGNOperator(model, loss_fn, data, mode="empirical")
    c = _c(loss_fn, model, whole)
    summed = nn.CrossEntropyLoss(reduction="sum")
    truth = dense_point_outer_products(model, summed, whole, c)
    torch.testing.assert_close(op.to_dense(), truth, **CLOSE)
    _assert_mc_converges(model, loss_fn, data, dense_ggn(model, loss_fn, whole))


@pytest.mark.parametrize("separate", [True, False])
def test_padded_sequences_kfac_exact_for_one_input_everywhere(separate):
    model, loss_fn, data = _sequences(same_inputs=True)
    op = curvops.KFACOperator(model, loss_fn, data, separate_weight_and_bias=separate)
    G = dense_block_ggn(model, loss_fn, _padded(data), separate)
    torch.testing.assert_close(op.to_dense(), G, **CLOSE)


def test_padded_sequences_ekfac_trace():
    model, loss_fn, data = _sequences()
    op = curvops.EKFACOperator(model, loss_fn, data)
    truth = float(torch.trace(dense_block_ggn(model, loss_fn, _padded(data))))
    assert op.trace() == pytest.approx(truth, rel=1e-10)


def test_mse_over_sequences_of_unequal_lengths():
    """MSE's mean divides by the elements: a batch of B points of length S weighs B·S·C / D
    (truth: the sum over the batches of the summed loss, over D, differentiated densely)."""
    torch.manual_seed(0)
    model = SequenceNet(2).double()
    gen = torch.Generator().manual_seed(3)
    data = [
        (
            torch.randn(B, S, 3, generator=gen, dtype=torch.float64),
            torch.randn(B, 2, S, generator=gen, dtype=torch.float64),
        )
        for B, S in zip(SIZES, SEQ_LENGTHS)
    ]
    D = sum(y.numel() for _, y in data)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def call(flat, X):
        chunks = torch.split(flat, [p.numel() for p in params])
        ps = {n: c.view(p.shape) for n, c, p in zip(names, chunks, params)}
        return torch.func.functional_call(model, ps, (X,))

    def whole_loss(flat):
        return sum(((call(flat, X) - y) ** 2).sum() for X, y in data) / D

    H = torch.autograd.functional.hessian(whole_loss, flat0)
    Js = [torch.func.jacrev(lambda w, X=X: call(w, X))(flat0).flatten(0, -2) for X, _ in data]
    G = sum(2.0 / D * J.T @ J for J in Js)
    hessian = curvops.HessianOperator(model, nn.MSELoss(), data).to_dense()
    torch.testing.assert_close(hessian, H, **CLOSE)
    ggn = curvops.GGNOperator(model, nn.MSELoss(), data).to_dense()
    torch.testing.assert_close(ggn, G, **CLOSE)


# ---------------------------------------------------------------- other torch losses (Hessian)
def _log_softmax_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.LogSoftmax(dim=1)).double()


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.NLLLoss(weight=W, ignore_index=1),
        nn.NLLLoss(weight=W),
        nn.NLLLoss(ignore_index=-100),
        nn.KLDivLoss(reduction="batchmean"),
        nn.KLDivLoss(reduction="mean"),
    ],
    ids=["nll_weight_ignore", "nll_weight", "nll_ignore", "kl_batchmean", "kl_mean"],
)
def test_hessian_of_log_probability_losses(loss_fn):
    model = _log_softmax_model()
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(sum(SIZES), 4, generator=gen, dtype=torch.float64)
    if isinstance(loss_fn, nn.KLDivLoss):
        y = torch.softmax(torch.randn(sum(SIZES), 3, generator=gen, dtype=torch.float64), 1)
    else:
        y = torch.randint(0, 3, (sum(SIZES),), generator=gen)
        y[::3] = -100 if loss_fn.ignore_index == -100 else y[::3]
    data = _split(X, y)
    op = curvops.HessianOperator(model, loss_fn, data)
    torch.testing.assert_close(op.to_dense(), dense_hessian(model, loss_fn, data), **CLOSE)
    torch.testing.assert_close(op.gradient(), dense_gradient(model, loss_fn, data), **CLOSE)


@pytest.mark.parametrize("loss_fn", [nn.HuberLoss(delta=0.5), nn.L1Loss(), nn.SmoothL1Loss()])
def test_hessian_of_elementwise_losses(loss_fn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(sum(SIZES), 4, generator=gen, dtype=torch.float64)
    data = _split(X, torch.randn(sum(SIZES), 3, generator=gen, dtype=torch.float64))
    op = curvops.HessianOperator(model, loss_fn, data)
    torch.testing.assert_close(op.to_dense(), dense_hessian(model, loss_fn, data), **CLOSE)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "build",
    [
        lambda m, f, d: curvops.GGNOperator(m, f, d, mode="mc"),
        lambda m, f, d: curvops.KFACOperator(m, f, d, fisher="mc"),
        lambda m, f, d: curvops.EKFACOperator(m, f, d, fisher="mc"),
    ],
    ids=["ggn", "kfac", "ekfac"],
)
def test_mc_fisher_refused_with_pos_weight(build):
    model, loss_fn, data = _problem("bce_pos_weight")
    with pytest.raises(
        ValueError, match=r"Monte-Carlo Fisher is undefined.*pos_weight.*mode='exact'"
    ):
        build(model, loss_fn, data)


@pytest.mark.parametrize("loss_fn", [nn.CosineEmbeddingLoss(), nn.GaussianNLLLoss()])
def test_torch_loss_whose_mean_cannot_be_counted(loss_fn):
    model, _, data = _problem("mse_mean")
    with pytest.raises(ValueError, match=r"reduction='mean'\) is not supported.*reduction='sum'"):
        curvops.HessianOperator(model, loss_fn, data)


def test_reduction_override_of_a_loss_module():
    model, loss_fn, data = _problem("mse_mean")
    with pytest.raises(ValueError, match=r"reduction='sum' was given.*has reduction='mean'"):
        curvops.HessianOperator(model, loss_fn, data, reduction="sum")


def test_elementwise_targets_that_would_broadcast():
    model, _, data = _problem("mse_mean")
    bad = [(X, y[:, :1]) for X, y in data]
    with pytest.raises(ValueError, match=r"\(4, 1\) do not match the model output \(4, 3\)"):
        curvops.HessianOperator(model, nn.L1Loss(), bad)


def test_every_target_ignored():
    model, loss_fn, data = _problem("ce_ignore")
    ignored = [(X, torch.full_like(y, -100)) for X, y in data]
    with pytest.raises(ValueError, match="whole-data mean loss is 0/0.*ignore_index"):
        curvops.GGNOperator(model, loss_fn, ignored)


@pytest.mark.parametrize("num_data", [7, 9])
def test_num_data_that_disagrees_with_the_count(num_data):
    model, loss_fn, data = _problem("ce_weight")
    with pytest.raises(ValueError, match=rf"num_data={num_data} was given.*yield 8 data points"):
        curvops.GGNOperator(model, loss_fn, data, num_data=num_data)
    assert curvops.GGNOperator(model, loss_fn, data, num_data=8).num_data == 8


# ---------------------------------------------------------------- batches that count for nothing
KINDS = ["hessian", "ggn", "mc", "empirical", "kfac", "ekfac"]


def _build(kind, model, loss_fn, data):
    if kind == "hessian":
        return curvops.HessianOperator(model, loss_fn, data)
    if kind in ("kfac", "ekfac"):
        cls = curvops.KFACOperator if kind == "kfac" else curvops.EKFACOperator
        return cls(model, loss_fn, data)
    mode = {"ggn": "exact"}.get(kind, kind)
    return curvops.GGNOperator(model, loss_fn, data, mode=mode)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_and_fully_ignored_batches_are_skipped(kind):
    """A batch of 0 rows is skipped by every operator; one whose every target is ignored adds
    nothing to a product or the gradient (KFAC still reads its layer inputs into A)."""
    model, loss_fn, data = _problem("ce_ignore")
    X, y = data[1]
    ignored = (X, torch.full_like(y, -100))
    with_empty = [data[0], (X[:0], y[:0]), data[1], ignored, data[2]]
    a = _build(kind, model, loss_fn, with_empty)
    b = _build(kind, model, loss_fn, [*data, ignored])
    torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.gradient(), b.gradient(), rtol=1e-12, atol=1e-14)
    assert a.num_data == 11
    if kind not in ("kfac", "ekfac"):
        c = _build(kind, model, loss_fn, data)
        torch.testing.assert_close(a.to_dense(), c.to_dense(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_data_of_empty_batches_only(kind):
    model, loss_fn, data = _problem("ce_ignore")
    empty = [(X[:0], y[:0]) for X, y in data]
    with pytest.raises(ValueError, match=r"no data points \(its 3 batches are all empty\)"):
        _build(kind, model, loss_fn, empty)
