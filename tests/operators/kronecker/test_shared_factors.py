"""EKFACOperator(..., kfac=op): EKFAC on a KFAC's factors and eigendecompositions (shared),
one data pass instead of two, the same matrix as an EKFAC built on its own; any KFAC of
another matrix is refused."""

import pytest
import torch
from torch import nn
from whole_models import WHOLE_MODELS

from curvops.core.errors import StaleOperatorError
from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * float(b.abs().max()))


@pytest.mark.parametrize("name", list(WHOLE_MODELS))
def test_ekfac_on_a_kfac_is_the_ekfac_built_alone(name):
    if name in ("bert", "gpt2"):
        pytest.importorskip("transformers")
    model, loss_fn, data = WHOLE_MODELS[name]()
    kfac = KFACOperator(model, loss_fn, data)
    shared = EKFACOperator(model, loss_fn, data, kfac=kfac)
    alone = EKFACOperator(model, loss_fn, data)
    _close(shared.to_dense(), alone.to_dense())
    assert shared.strategies == alone.strategies
    kfac_bases = {id(q) for blk in kfac._blocks for f in (blk.G, blk.A) if f._eig for q in f._eig}
    mine = [q for blk in shared._blocks for f in (blk.G, blk.A) if f._eig for q in f._eig]
    assert sum(id(q) in kfac_bases for q in mine) > 0  # the eigenvectors are KFAC's tensors


def _mlp_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,)))
        for n in (5, 4)
    ]
    return model, nn.CrossEntropyLoss(), data


@pytest.mark.parametrize(
    "kw",
    [{"fisher": "mc", "mc_samples": 2, "seed": 3}, {"fisher": "empirical"},
     {"fisher": "forward-only"}, {"separate_weight_and_bias": False}, {"approx": "reduce"}],
)  # fmt: skip
def test_every_fisher_and_setting_shares_the_same_matrix(kw):
    model, loss_fn, data = _mlp_problem()
    kfac = KFACOperator(model, loss_fn, data, **kw)
    _close(
        EKFACOperator(model, loss_fn, data, kfac=kfac, **kw).to_dense(),
        EKFACOperator(model, loss_fn, data, **kw).to_dense(),
    )


def test_one_data_pass_instead_of_two_and_refreshes_compute_their_own():
    model, loss_fn, data = _mlp_problem()
    calls = []
    model[0].register_forward_hook(lambda *_: calls.append(1))
    kfac = KFACOperator(model, loss_fn, data)
    n = len(calls)
    EKFACOperator(model, loss_fn, data)
    alone = len(calls) - n
    n = len(calls)
    shared = EKFACOperator(model, loss_fn, data, kfac=kfac)
    assert len(calls) - n <= alone - len(data)  # at least the factor pass is saved
    with torch.no_grad():
        model[0].weight.mul_(1.5)  # the model moves; EKFAC's refresh uses its own data pass
    shared.refresh()
    fresh = EKFACOperator(model, loss_fn, data)
    _close(shared.to_dense(), fresh.to_dense())
    with pytest.raises(StaleOperatorError, match=r"kfac= is stale.*kfac\.refresh\(\)"):
        EKFACOperator(model, loss_fn, data, kfac=kfac)


def test_a_kfac_of_another_matrix_is_refused():
    model, loss_fn, data = _mlp_problem()
    kfac = KFACOperator(model, loss_fn, data)
    other_model, _, _ = _mlp_problem(seed=1)
    cases = [
        (dict(model=other_model), ValueError, "another model"),
        (dict(data=list(data)), ValueError, "another data"),
        (dict(loss_fn=nn.CrossEntropyLoss()), ValueError, "another loss_fn"),
        (dict(params=list(model.parameters())[:2]), ValueError, "another params"),
        (dict(fisher="empirical"), ValueError, "fisher='type2'.*fisher='empirical'"),
    ]
    for change, error, message in cases:
        args = {"model": model, "loss_fn": loss_fn, "data": data, **change}
        with pytest.raises(error, match=message):
            EKFACOperator(args.pop("model"), args.pop("loss_fn"), args.pop("data"), kfac=kfac,
                          **args)  # fmt: skip
    ekfac = EKFACOperator(model, loss_fn, data)
    with pytest.raises(TypeError, match="kfac= takes a KFACOperator"):
        EKFACOperator(model, loss_fn, data, kfac=ekfac)
