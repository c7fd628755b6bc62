"""The operator contract: scipy interface, torch fast path, dtype, devices, data handling."""

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from models import make_problem
from oracles import dense_ggn, dense_hessian
from torch import nn

import curvops


@pytest.fixture(params=["hessian", "ggn", "mc", "empirical"])
def op_factory(request):
    kind = request.param

    def build(model, loss_fn, data, **kw):
        if kind == "hessian":
            return curvops.HessianOperator(model, loss_fn, data, **kw)
        mode = {"ggn": "exact"}.get(kind, kind)
        return curvops.GGNOperator(model, loss_fn, data, mode=mode, **kw)

    return build


def test_matvec_matmat_torch_matmat_agree(op_factory, device):
    model, loss_fn, data = make_problem("mlp_tanh", "ce", device=device)
    op = op_factory(model, loss_fn, data)
    assert isinstance(op, sla.LinearOperator) and op.shape == (43, 43)
    rng = np.random.default_rng(0)
    V = rng.standard_normal((43, 4))
    by_matmat = op.matmat(V)
    by_matvec = np.stack([op @ V[:, j] for j in range(4)], axis=1)
    by_torch = op.torch_matmat(torch.as_tensor(V, device=device)).cpu().numpy()
    np.testing.assert_allclose(by_matmat, by_matvec, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(by_matmat, by_torch, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(op @ V[:, 0], op @ V[:, 0])  # repeatable
    assert by_matmat.dtype == np.float64
    np.testing.assert_allclose(op @ V, by_matmat, rtol=1e-12)


def test_operator_device_follows_model(device):
    model, loss_fn, data = make_problem("cnn", "mse", device=device)
    op = curvops.HessianOperator(model, loss_fn, data)
    assert op.device.type == device.type
    out = op.torch_matmat(torch.ones(op.shape[0], device=device, dtype=torch.float64))
    assert out.device.type == device.type


def test_float32_operator_casts_float64_input():
    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    model.float()
    data = [(X.float(), y.float()) for X, y in data]
    op = curvops.GGNOperator(model, loss_fn, data)
    assert op.dtype == np.float32
    v = np.random.default_rng(0).standard_normal(op.shape[0])  # float64
    out = op @ v
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, op @ v.astype(np.float32), rtol=1e-6)


def test_float32_data_feeds_float64_model():
    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    data32 = [(X.float(), y.float()) for X, y in data]
    op = curvops.HessianOperator(model, loss_fn, data32)
    truth = dense_hessian(
        model, loss_fn, [(X.float().double(), y.float().double()) for X, y in data]
    )
    torch.testing.assert_close(op.to_dense(), truth, rtol=1e-10, atol=1e-12)


def test_batch_weighting_is_by_size_not_mean_of_means():
    # 32/32/6 split: averaging batch means equally would be ~39% off for the last batch.
    model, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=(32, 32, 6))
    one_batch = [(torch.cat([X for X, _ in data]), torch.cat([y for _, y in data]))]
    a = curvops.GGNOperator(model, loss_fn, data).to_dense()
    b = curvops.GGNOperator(model, loss_fn, one_batch).to_dense()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a, dense_ggn(model, loss_fn, data), rtol=1e-10, atol=1e-12)


def test_num_data_given_or_counted():
    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    op = curvops.HessianOperator(model, loss_fn, data)
    assert op.num_data == 10
    same = curvops.HessianOperator(model, loss_fn, data, num_data=10)
    torch.testing.assert_close(same.to_dense(), op.to_dense())
    with pytest.raises(ValueError, match="num_data=20 was given, but the data yield 10 data"):
        curvops.HessianOperator(model, loss_fn, data, num_data=20)


def test_dataloader_is_accepted():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    X = torch.cat([X for X, _ in data])
    y = torch.cat([y for _, y in data])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4)
    op = curvops.HessianOperator(model, loss_fn, loader, progress=True)
    torch.testing.assert_close(op.to_dense(), dense_hessian(model, loss_fn, data))


def test_flatten_unflatten_roundtrip():
    model, loss_fn, data = make_problem("cnn", "mse")
    op = curvops.HessianOperator(model, loss_fn, data)
    vec = torch.arange(op.shape[0], dtype=torch.float64)
    parts = op.unflatten(vec)
    assert [p.shape for p in parts] == [p.shape for p in op.params]
    torch.testing.assert_close(op.flatten(parts), vec)
    assert len(op.unflatten(vec.numpy())) == len(op.params)


def test_operator_follows_parameter_updates():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.HessianOperator(model, loss_fn, data)
    before = op.to_dense()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    after = op.to_dense()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, dense_hessian(model, loss_fn, data))


def test_scipy_eigsh_consumes_operator():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.GGNOperator(model, loss_fn, data)
    vals = sla.eigsh(op, k=3, which="LA", return_eigenvectors=False)
    truth = np.linalg.eigvalsh(dense_ggn(model, loss_fn, data).numpy())[-3:]
    np.testing.assert_allclose(np.sort(vals), truth, rtol=1e-8)


def test_reference_net_of_design():
    """DESIGN §4: W = [[2,3],[4,1]], v = [2,1], x = [1,1], y = 14, MSELoss, one point."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 3.0], [4.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[2.0, 1.0]]))
    data = [
        (
            torch.tensor([[1.0, 1.0]], dtype=torch.float64),
            torch.tensor([[14.0]], dtype=torch.float64),
        )
    ]
    full = np.linalg.eigvalsh(curvops.HessianOperator(model, nn.MSELoss(), data).to_dense().numpy())
    np.testing.assert_allclose(full[-1], 122.03225, rtol=1e-6)
    np.testing.assert_allclose(full[:2], [-2 * np.sqrt(2), -2.03225], rtol=1e-5)
    block_op = curvops.HessianOperator(model, nn.MSELoss(), data, blocks="layer")
    W_block = block_op.to_dense()[:4, :4].numpy()
    vals, vecs = np.linalg.eigh(W_block)
    np.testing.assert_allclose(vals[-1], 20.0, rtol=1e-12)
    np.testing.assert_allclose(
        np.abs(vecs[:, -1]), np.array([2, 2, 1, 1]) / np.sqrt(10), rtol=1e-10
    )
    v_vals = np.linalg.eigvalsh(block_op.to_dense()[4:, 4:].numpy())
    np.testing.assert_allclose(v_vals[-1], 100.0, rtol=1e-12)
    ggn = np.linalg.eigvalsh(curvops.GGNOperator(model, nn.MSELoss(), data).to_dense().numpy())
    np.testing.assert_allclose(ggn[-1], 120.0, rtol=1e-12)


def test_custom_blocks_are_named_by_their_parameters():
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    data = [(torch.randn(4, 3), torch.randn(4, 1))]
    w0, b0, w2, b2 = model.parameters()
    op = curvops.HessianOperator(model, nn.MSELoss(), data, blocks=[[w0, b0], [w2], [b2]])
    assert op.block_names == ["0.weight+0.bias", "2.weight", "2.bias"]
    kfac = curvops.KFACOperator(model, nn.MSELoss(), data)
    assert kfac.block_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
