"""Every performance path of the Hessian and GGN products against dense float64 ground truth:
the per-batch graph cache (and everything that must invalidate it), the column plan
(batched / one product per column / chunks / the timed trial) and the GGN's J v methods."""

import pytest
import torch
from models import make_problem
from oracles import dense_empirical_fisher, dense_ggn, dense_hessian

import curvops


def _assert_close(A, B, rtol=1e-10):
    scale = B.abs().max().clamp(min=1e-12)
    assert (A.cpu() - B.cpu()).abs().max() <= rtol * scale, float((A.cpu() - B.cpu()).abs().max())


def _directions(P, k=5, seed=0):
    return torch.randn(P, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hessian(name="mlp_tanh", loss="ce", **options):
    model, loss_fn, data = make_problem(name, loss)
    return model, loss_fn, data, curvops.HessianOperator(model, loss_fn, data, **options)


# ---------------------------------------------------------------- graph cache
@pytest.mark.parametrize("name", ["mlp_tanh", "cnn", "batchnorm_eval", "sequence"])
def test_cached_products_stay_exact(name):
    model, loss_fn, data, op = _hessian(name)
    H = dense_hessian(model, loss_fn, data)
    V = _directions(op.shape[0])
    for _ in range(3):  # the first product fills the cache, the others reuse it
        _assert_close(op.torch_matmat(V), H @ V)
        _assert_close(op.torch_matmat(V[:, 0]), H @ V[:, 0])
    assert op._cache.complete and len(op._cache.entries) == len(data)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m[0].weight.data.mul_(1.5),  # through .data: no version counter bump
        lambda m: torch.nn.init.normal_(m[2].weight),
        lambda m: m[0].bias.data.add_(0.1),
        lambda m: m[2].weight.copy_(m[2].weight.flip(0)),  # same values, permuted
    ],
)
def test_cache_follows_the_parameters(change):
    model, loss_fn, data, op = _hessian()
    V = _directions(op.shape[0])
    op.torch_matmat(V)
    with torch.no_grad():
        change(model)
    _assert_close(op.torch_matmat(V), dense_hessian(model, loss_fn, data) @ V)


def test_cache_follows_an_optimizer_step_and_buffers():
    model, loss_fn, data = make_problem("batchnorm_eval", "ce")
    op = curvops.GGNOperator(model, loss_fn, data)
    V = _directions(op.shape[0])
    op.torch_matmat(V)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn(model(data[0][0]), data[0][1]).backward()
    opt.step()
    _assert_close(op.torch_matmat(V), dense_ggn(model, loss_fn, data) @ V)
    model[1].running_mean.data.add_(0.3)  # a buffer, changed behind autograd's back
    _assert_close(op.torch_matmat(V), dense_ggn(model, loss_fn, data) @ V)


def test_cache_follows_replaced_and_modified_data():
    """New tensors or in-place writes drop the cached graphs; changed values are refused."""
    model, loss_fn, data, op = _hessian()
    V = _directions(op.shape[0])
    H = dense_hessian(model, loss_fn, data)
    op.torch_matmat(V)
    data[1] = (data[1][0].clone(), data[1][1])  # a new tensor (same values) at index 1
    _assert_close(op.torch_matmat(V), H @ V)
    data[0][0].mul_(1.0)  # in place: the version counter moves
    _assert_close(op.torch_matmat(V), H @ V)
    data[0][0].mul_(0.5)  # other values: another matrix, refused
    with pytest.raises(ValueError, match="data changed between passes"):
        op.torch_matmat(V)
    fresh = curvops.HessianOperator(model, loss_fn, data)
    _assert_close(fresh.torch_matmat(V), dense_hessian(model, loss_fn, data) @ V)


def test_dataloader_too_large_to_keep_turns_the_cache_off():
    """Batches over the budget are not kept: new tensors every pass, the cache turns off
    (kept batches: tests/operators/exact/test_dataloader_cache.py)."""
    from torch.utils.data import DataLoader, TensorDataset

    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    X, y = torch.cat([x for x, _ in data]), torch.cat([t for _, t in data])
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    probe = curvops.HessianOperator(model, loss_fn, data)
    probe.torch_matmat(_directions(probe.shape[0], 1))
    budget = (probe._cache.used + 1) / 2**20  # the graphs fit, the batches on top do not
    op = curvops.HessianOperator(model, loss_fn, loader, graph_cache_mib=budget)
    op._loop.keep_bytes = 1  # the batches alone exceed it
    H = dense_hessian(model, loss_fn, data)
    V = _directions(op.shape[0])
    for _ in range(2):
        _assert_close(op.torch_matmat(V), H @ V)
    assert op._loop.kept is None
    assert not op._cache.enabled and not op._cache.entries


@pytest.mark.parametrize("budget", ["off", "tiny", "partial"])
@pytest.mark.parametrize("op_cls", [curvops.HessianOperator, curvops.GGNOperator])
def test_cache_budget_off_none_or_partial(op_cls, budget):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    probe = op_cls(model, loss_fn, data)
    probe.torch_matmat(_directions(probe.shape[0], 1))
    mib = {"off": 0.0, "tiny": 1e-9, "partial": (probe._cache.used - 1) / 2**20}[budget]
    op = op_cls(model, loss_fn, data, graph_cache_mib=mib)
    dense = (dense_hessian if op_cls is curvops.HessianOperator else dense_ggn)(
        model, loss_fn, data
    )
    V = _directions(op.shape[0])
    for _ in range(2):
        _assert_close(op.torch_matmat(V), dense @ V)
    assert not op._cache.complete
    assert op._cache.used <= mib * 2**20
    assert len(op._cache.entries) == (len(data) - 1 if budget == "partial" else 0)


# ---------------------------------------------------------------- column plan
@pytest.mark.parametrize("chunk_size", [None, 1, 2, 7])
@pytest.mark.parametrize("name", ["mlp_relu_nobias", "cnn", "dict_input"])
def test_chunk_sizes(name, chunk_size):
    model, loss_fn, data = make_problem(name, "ce")
    bs = (lambda X: X["a"].shape[0]) if name == "dict_input" else None
    for op_cls, dense in [
        (curvops.HessianOperator, dense_hessian),
        (curvops.GGNOperator, dense_ggn),
    ]:
        op = op_cls(model, loss_fn, data, chunk_size=chunk_size, batch_size_fn=bs)
        V = _directions(op.shape[0])
        for _ in range(2):
            _assert_close(op.torch_matmat(V), dense(model, loss_fn, data) @ V)


@pytest.mark.parametrize("column_mode", ["rule", "per_column", "batched", "auto"])
@pytest.mark.parametrize("op_cls", [curvops.HessianOperator, curvops.GGNOperator])
def test_column_plan_paths(op_cls, column_mode):
    model, loss_fn, data = make_problem("sequence", "ce")
    op = op_cls(model, loss_fn, data, column_mode=column_mode)
    dense = (dense_hessian if op_cls is curvops.HessianOperator else dense_ggn)(
        model, loss_fn, data
    )
    for k in (1, 2, 3, 6):
        V = _directions(op.shape[0], k, seed=k)
        _assert_close(op.torch_matmat(V), dense @ V)
    assert op._plan.batched is not None  # decided by the rule, the mode, or the trial


def test_column_rule_is_fixed_by_model_type_and_size():
    """No timing: conv nets and LayerNorm models one column at a time, small MLPs batched,
    and two operators built alike always take the same path."""
    assert _hessian("cnn")[3]._plan.batched is False
    norm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    data = [(torch.randn(5, 3), torch.randint(0, 2, (5,)))]
    ce = torch.nn.CrossEntropyLoss()
    assert curvops.HessianOperator(norm, ce, data)._plan.batched is False
    small = [_hessian("mlp_tanh")[3] for _ in range(2)]
    assert small[0]._plan.batched is True and small[1]._plan.batched is True
    assert _hessian("mlp_tanh", chunk_size=3)[3]._plan.step(8) == 3
    big = torch.nn.Sequential(torch.nn.Linear(200, 100), torch.nn.Tanh(), torch.nn.Linear(100, 3))
    data = [(torch.randn(4, 200), torch.randint(0, 3, (4,)))]
    H = curvops.HessianOperator(big, torch.nn.CrossEntropyLoss(), data)
    assert H._plan.batched is False  # P = 20,403 > BATCHED_MAX_PARAMS
    with pytest.raises(ValueError, match="column_mode must be one of"):
        curvops.HessianOperator(big, torch.nn.CrossEntropyLoss(), data, column_mode="timed")


def test_batched_backward_falls_back_to_a_loop(monkeypatch):
    from curvops.operators.exact import autograd

    real = autograd._grad

    def no_batching(outputs, inputs, grads, batched):
        if batched:
            raise RuntimeError("no batching rule")
        return real(outputs, inputs, grads, batched)

    monkeypatch.setattr(autograd, "_grad", no_batching)
    model, loss_fn, data, op = _hessian(chunk_size=4)
    V = _columns_(op.shape[0])
    with pytest.warns(UserWarning, match="looping over columns"):
        _assert_close(op.torch_matmat(V), dense_hessian(model, loss_fn, data) @ V)


def _columns_(P):
    return _directions(P, 4)


# ---------------------------------------------------------------- GGN J v methods
@pytest.mark.parametrize("jvp", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("name", ["mlp_tanh", "cnn", "sequence", "dict_input"])
def test_ggn_jvp_methods(name, loss, jvp):
    model, loss_fn, data = make_problem(name, loss)
    bs = (lambda X: X["a"].shape[0]) if name == "dict_input" else None
    op = curvops.GGNOperator(model, loss_fn, data, jvp=jvp, batch_size_fn=bs)
    G = dense_ggn(model, loss_fn, data)
    V = _directions(op.shape[0])
    for _ in range(2):
        _assert_close(op.torch_matmat(V), G @ V)
    if jvp != "auto":
        assert op._reverse_jvp == (jvp == "reverse")


@pytest.mark.parametrize("cache_mib, reverse", [(1024.0, True), (0.0, False)])
def test_ggn_default_jvp_is_a_rule(cache_mib, reverse):
    """jvp unset: reverse mode while the graph cache is on, forward mode without it."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.GGNOperator(model, loss_fn, data, graph_cache_mib=cache_mib)
    V = _directions(op.shape[0])
    _assert_close(op.torch_matmat(V), dense_ggn(model, loss_fn, data) @ V)
    assert op._reverse_jvp is reverse


@pytest.mark.parametrize("jvp", ["forward", "reverse"])
def test_ggn_empirical_and_blocks_on_the_cached_graph(jvp):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.GGNOperator(model, loss_fn, data, mode="empirical", jvp=jvp)
    E = dense_empirical_fisher(model, loss_fn, data)
    V = _directions(op.shape[0])
    for _ in range(2):
        _assert_close(op.torch_matmat(V), E @ V)
    blocks = curvops.GGNOperator(model, loss_fn, data, blocks="layer", jvp=jvp)
    G = dense_ggn(model, loss_fn, data)
    expected = torch.zeros_like(G)
    for s in blocks.block_slices:
        expected[s, s] = G[s, s]
    for _ in range(2):
        _assert_close(blocks.torch_matmat(V), expected @ V)


def test_hessian_blocks_on_the_cached_graph():
    model, loss_fn, data, op = _hessian("cnn", blocks="layer")
    H = dense_hessian(model, loss_fn, data)
    expected = torch.zeros_like(H)
    for s in op.block_slices:
        expected[s, s] = H[s, s]
    V = _directions(op.shape[0])
    for _ in range(2):
        _assert_close(op.torch_matmat(V), expected @ V)


def test_bad_options():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(ValueError, match="jvp must be one of"):
        curvops.GGNOperator(model, loss_fn, data, jvp="sideways")
    with pytest.raises(ValueError, match="chunk_size"):
        curvops.GGNOperator(model, loss_fn, data, chunk_size=0)
