"""KFACOperator against dense float64 ground truth (torch.func), and its failure modes."""

import pytest
import torch
from kfac_models import dense_block_ggn, layer_blocks, make, reference_net, rel_err
from oracles import dense_empirical_fisher
from torch import nn

from curvops.operators.exact.ggn import GGNOperator
from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator
from curvops.operators.kronecker.operator import StaleOperatorError


def test_reference_net_eigenvalues_100_and_20():
    model, loss_fn, data = reference_net()
    K = KFACOperator(model, loss_fn, data).to_dense()
    top = torch.linalg.eigvalsh(K)[-2:]
    torch.testing.assert_close(top, torch.tensor([20.0, 100.0], dtype=torch.float64))
    torch.testing.assert_close(K, dense_block_ggn(model, loss_fn, data), atol=1e-10, rtol=0)


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("separate", [True, False])
def test_exact_for_deep_linear_net_and_one_point(loss, reduction, separate):
    model, loss_fn, data = make("deep_linear", loss, reduction, sizes=(1,))
    op = KFACOperator(model, loss_fn, data, separate_weight_and_bias=separate)
    G = dense_block_ggn(model, loss_fn, data, separate)
    torch.testing.assert_close(op.to_dense(), G, atol=1e-10, rtol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("separate", [True, False])
def test_exact_for_one_linear_layer_with_mse_over_unequal_batches(reduction, separate):
    model, loss_fn, data = make("linear", "mse", reduction)
    op = KFACOperator(model, loss_fn, data, separate_weight_and_bias=separate)
    G = dense_block_ggn(model, loss_fn, data, separate)
    torch.testing.assert_close(op.to_dense(), G, atol=1e-10, rtol=0)


def test_empirical_fisher_exact_for_one_point():
    model, loss_fn, data = make("mlp", "ce", sizes=(1,))
    op = KFACOperator(model, loss_fn, data, fisher="empirical")
    blocks = layer_blocks(model)
    from kfac_models import block_diagonal

    params = [p for b in blocks for p in b]
    F = block_diagonal(dense_empirical_fisher(model, loss_fn, data, params), blocks)
    torch.testing.assert_close(op.to_dense(), F, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["mlp", "cnn", "seq"])
def test_approaches_block_ggn_on_non_exact_cases(name):
    model, loss_fn, data = make(name, "ce")
    K = KFACOperator(model, loss_fn, data).to_dense()
    G = dense_block_ggn(model, loss_fn, data)
    assert 1e-4 < rel_err(K, G) < 0.5  # an approximation, but a close one
    assert torch.allclose(K, K.T) and torch.linalg.eigvalsh(K).min() > -1e-10


@pytest.mark.parametrize("name", ["mlp", "linear"])
@pytest.mark.parametrize("separate", [True, False])
def test_expand_equals_reduce_without_weight_sharing(name, separate):
    model, loss_fn, data = make(name, "ce")
    ops = [
        KFACOperator(model, loss_fn, data, approx=a, separate_weight_and_bias=separate)
        for a in ("expand", "reduce")
    ]
    torch.testing.assert_close(ops[0].to_dense(), ops[1].to_dense(), atol=1e-12, rtol=0)


def test_expand_and_reduce_differ_with_weight_sharing():
    model, loss_fn, data = make("cnn", "mse")
    dense = [KFACOperator(model, loss_fn, data, approx=a).to_dense() for a in ("expand", "reduce")]
    assert rel_err(dense[0], dense[1]) > 1e-3


def test_batch_weighting_does_not_depend_on_the_split():
    for reduction in ("mean", "sum"):
        model, loss_fn, data = make("cnn", "ce", reduction)
        one = [(torch.cat([X for X, _ in data]), torch.cat([y for _, y in data]))]
        a = KFACOperator(model, loss_fn, data).to_dense()
        b = KFACOperator(model, loss_fn, one).to_dense()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_mc_approaches_type2_as_samples_grow():
    model, loss_fn, data = make("mlp", "ce", sizes=(20,))
    exact = KFACOperator(model, loss_fn, data).to_dense()
    errs = {
        m: rel_err(KFACOperator(model, loss_fn, data, fisher="mc", mc_samples=m).to_dense(), exact)
        for m in (1, 400)
    }
    # The MC factor G is a mean of M i.i.d. rank-one terms per point: its relative standard
    # error falls like 1/sqrt(M·N). With N=20 it is O(1) at M=1 and about 20x smaller at M=400;
    # a 4x margin and an absolute 0.15 bound leave room for the fluctuations of one seed.
    assert errs[400] < errs[1] / 4 and errs[400] < 0.15, errs


def test_sequence_inputs_expand_exact_diagonal_terms_and_mixing_supported():
    model, loss_fn, data = make("mix", "ce")
    K = KFACOperator(model, loss_fn, data).to_dense()
    G = dense_block_ggn(model, loss_fn, data)
    assert rel_err(K, G) < 0.5


def test_bias_only_and_weight_only_params():
    model, loss_fn, data = make("mlp", "mse", sizes=(1,))
    params = [model[0].bias, model[2].weight]
    op = KFACOperator(model, loss_fn, data, params=params, separate_weight_and_bias=False)
    from oracles import dense_ggn

    G = dense_ggn(model, loss_fn, data, params)
    G[:5, 5:] = 0
    G[5:, :5] = 0
    torch.testing.assert_close(op.to_dense(), G, atol=1e-10, rtol=0)


def test_compute_is_idempotent():
    model, loss_fn, data = make("mlp", "ce")
    op = KFACOperator(model, loss_fn, data)
    before = op.to_dense()
    op.compute()
    op.compute()
    torch.testing.assert_close(op.to_dense(), before, atol=0, rtol=0)


def _step(model, loss_fn, data):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = data[0]
    loss_fn(model(X), y).backward()
    opt.step()


def test_stale_after_optimizer_step_raises_or_recomputes():
    model, loss_fn, data = make("mlp", "ce")
    raising = KFACOperator(model, loss_fn, data)
    following = KFACOperator(model, loss_fn, data, on_stale="recompute")
    v = torch.randn(raising.shape[0], dtype=torch.float64)
    raising.torch_matmat(v)
    _step(model, loss_fn, data)
    assert raising.is_stale
    with pytest.raises(StaleOperatorError, match="stale"):
        raising.torch_matmat(v)
    with pytest.raises(StaleOperatorError):
        raising.trace()
    fresh = KFACOperator(model, loss_fn, data)
    torch.testing.assert_close(following.torch_matmat(v), fresh.torch_matmat(v))
    raising.refresh()
    torch.testing.assert_close(raising.torch_matmat(v), fresh.torch_matmat(v))


def test_unsupported_layer_gets_a_fallback_block_or_names_module_with_error():
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    _, loss_fn, data = make("mlp", "ce")
    with pytest.raises(ValueError, match=r"'1.weight' of '1' \(LayerNorm\).*params="):
        KFACOperator(model, loss_fn, data, fallback="error")
    op = KFACOperator(model, loss_fn, data)
    assert op.structures["1.weight"] == op.structures["1.bias"] == "exact"
    assert "LayerNorm" in op.fallback_reasons["1.weight"]
    params = [p for n, p in model.named_parameters() if not n.startswith("1.")]
    op = KFACOperator(model, loss_fn, data, params=params, fallback="error")
    assert op.shape[0] == sum(p.numel() for p in params)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, X):
        return self.out(torch.tanh(self.a(torch.tanh(self.a(X)))))


def test_layer_called_twice_is_one_kronecker_block_over_both_calls():
    model = _Tied().double()
    _, loss_fn, data = make("mlp", "ce")
    op = KFACOperator(model, loss_fn, data)
    assert op.structures == {n: "kronecker" for n, _ in model.named_parameters()}
    assert [layer.name for layer in op.layers] == ["a", "out"]


def test_parameter_shared_by_two_modules_is_one_block():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    model[2].weight = model[0].weight
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 3, (4,)))]
    op = KFACOperator(model, nn.CrossEntropyLoss(), data)
    assert [layer.name for layer in op.layers] == ["0.weight", "0.bias", "2.bias"]
    assert set(op.structures.values()) == {"kronecker"}


def test_bad_options():
    model, loss_fn, data = make("mlp", "ce")
    for kwargs in ({"fisher": "x"}, {"approx": "x"}, {"on_stale": "x"}, {"mc_samples": 0}):
        with pytest.raises(ValueError):
            KFACOperator(model, loss_fn, data, **kwargs)


def test_matches_ggn_operator_blocks_and_interface():
    model, loss_fn, data = make("linear", "mse")
    op = KFACOperator(model, loss_fn, data)
    ggn = GGNOperator(model, loss_fn, data, blocks=layer_blocks(model))
    v = torch.randn(op.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op.torch_matmat(v), ggn.torch_matmat(v))
    assert op.block_slices == ggn.block_slices
    import numpy as np

    np.testing.assert_allclose(op @ v.numpy(), ggn @ v.numpy(), atol=1e-12)


@pytest.mark.parametrize("cls", [KFACOperator, EKFACOperator])
def test_outputs_modified_in_place_downstream_are_cloned(cls):
    """nn.ReLU(inplace=True) right after a layer (and a norm layer): the recorded outputs
    would change under curvops; it notices from their version counters and clones them."""

    def net(inplace):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(4, 5),
            nn.ReLU(inplace=inplace),
            nn.LayerNorm(5),
            nn.ReLU(inplace=inplace),
            nn.Linear(5, 3),
        ).double()

    _, loss_fn, data = make("mlp", "ce")
    plain, inplace = cls(net(False), loss_fn, data), cls(net(True), loss_fn, data)
    assert not plain._collector.clone and inplace._collector.clone
    torch.testing.assert_close(inplace.to_dense(), plain.to_dense(), atol=1e-12, rtol=1e-12)
