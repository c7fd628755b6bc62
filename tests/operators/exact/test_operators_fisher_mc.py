"""The Monte-Carlo Fisher: reproducible for a seed, and converging to the exact GGN."""

import numpy as np
import pytest
import torch
from models import make_problem
from oracles import dense_ggn

import curvops


def _rel_error(model, loss_fn, data, M, seed, G):
    F = curvops.GGNOperator(model, loss_fn, data, mode="mc", mc_samples=M, seed=seed).to_dense()
    return float((F - G).norm() / G.norm())


@pytest.mark.parametrize("loss", ["ce", "mse", "bce"])
def test_mc_fisher_converges_to_ggn(loss):
    model, loss_fn, data = make_problem("mlp_tanh", loss)
    G = dense_ggn(model, loss_fn, data)
    e1 = np.mean([_rel_error(model, loss_fn, data, 1, s, G) for s in range(3)])
    e1024 = np.mean([_rel_error(model, loss_fn, data, 1024, s, G) for s in range(3)])
    # The MC Fisher is an unbiased mean of M i.i.d. terms, so its error's standard deviation
    # falls as 1/sqrt(M): from M=1 to M=1024 by a factor 32. Measured: 27-34 on these
    # problems; we require at least a factor 32/2.5 = 12.8 and an absolute error under 6%.
    assert e1024 < 2.5 * e1 / np.sqrt(1024)
    assert e1024 < 0.06


def test_mc_fisher_is_the_same_matrix_at_every_product():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.GGNOperator(model, loss_fn, data, mode="mc", seed=3)
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    np.testing.assert_array_equal(op @ v, op @ v)
    other = curvops.GGNOperator(model, loss_fn, data, mode="mc", seed=4)
    assert not np.allclose(op @ v, other @ v)
    dense = op.to_dense()
    torch.testing.assert_close(dense, dense.T)  # symmetric


def test_mc_fisher_with_sequence_outputs_converges():
    model, loss_fn, data = make_problem("sequence", "ce")
    G = dense_ggn(model, loss_fn, data)
    assert _rel_error(model, loss_fn, data, 1024, 0, G) < 0.06


def test_mc_fisher_does_not_depend_on_batch_order():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    a = curvops.GGNOperator(model, loss_fn, data, mode="mc", seed=1).to_dense()
    b = curvops.GGNOperator(model, loss_fn, data[::-1], mode="mc", seed=1).to_dense()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _shuffled_loader(data, seed):
    X = torch.cat([x for x, _ in data])
    y = torch.cat([t for _, t in data])
    dataset = torch.utils.data.TensorDataset(X, y)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=5, shuffle=True, generator=gen)


@pytest.mark.parametrize("loss", ["ce", "mse", "bce"])
def test_mc_fisher_is_one_matrix_under_a_shuffled_dataloader(loss):
    """The sampled labels follow each data point, not its batch: another batching of the
    same points (a shuffling DataLoader reshuffles before every product) gives the same
    matrix, for the GGN operator and for KFAC's MC factors."""
    model, loss_fn, data = make_problem("mlp_tanh", loss)
    model = model.double()
    data = [(x.double(), t.double() if t.is_floating_point() else t) for x, t in data]
    loader = _shuffled_loader(data, 0)
    ref = curvops.GGNOperator(model, loss_fn, data, mode="mc", seed=2).to_dense()
    op = curvops.GGNOperator(model, loss_fn, loader, mode="mc", seed=2)
    for _ in range(2):  # every to_dense() pass sees a new order and new batches
        torch.testing.assert_close(op.to_dense(), ref, rtol=1e-10, atol=1e-12)
    kfac = curvops.KFACOperator(model, loss_fn, data, fisher="mc", seed=2).to_dense()
    shuffled = curvops.KFACOperator(model, loss_fn, loader, fisher="mc", seed=2).to_dense()
    torch.testing.assert_close(shuffled, kfac, rtol=1e-10, atol=1e-12)


def test_point_sampler_draws_do_not_depend_on_the_batch():
    from curvops.core.data import Batch
    from curvops.core.seeds import PointSampler

    X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(6)
    whole = PointSampler(7, Batch(X, y, 6, 0), X.device).uniform((4, 6, 2), torch.float64)
    part = PointSampler(7, Batch(X[[4, 1]], y[[4, 1]], 2, 3), X.device)
    torch.testing.assert_close(part.uniform((4, 2, 2), torch.float64), whole[:, [4, 1]])
    assert float(whole.min()) > 0 and float(whole.max()) < 1
    # roughly uniform: mean 1/2, variance 1/12 over many draws
    many = PointSampler(1, Batch(X, y, 6, 0), X.device).uniform((2000, 6, 5), torch.float64)
    assert abs(float(many.mean()) - 0.5) < 0.01 and abs(float(many.var()) - 1 / 12) < 0.005
    normal = PointSampler(1, Batch(X, y, 6, 0), X.device).normal((2000, 6, 5), torch.float64)
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.var()) - 1) < 0.03


def test_point_keys_come_from_exact_bits_not_a_float_sum():
    """The keys are integer hashes of the values' bits: the same for any memory layout or
    dtype holding the same values (a float dot product's rounding, which changes with the
    device's summation order, does not enter), and different for a 1-ulp change."""
    from curvops.core.data import Batch
    from curvops.core.seeds import point_keys

    gen = torch.Generator().manual_seed(3)
    X = torch.randn(64, 37, generator=gen).double()
    y = torch.randint(0, 5, (64,), generator=gen)
    keys = point_keys(11, Batch(X, y, 64, 0), X.device)
    assert len(set(keys.tolist())) == 64
    layout = X.T.contiguous().T  # another memory order, same values
    assert torch.equal(point_keys(11, Batch(layout, y, 64, 0), X.device), keys)
    as_float32 = X.float()  # the same values after the round trip
    as_float32_keys = point_keys(11, Batch(as_float32, y, 64, 0), X.device)
    assert torch.equal(
        as_float32_keys, point_keys(11, Batch(as_float32.double(), y, 64, 0), X.device)
    )
    nudged = X.clone()
    nudged[5, 20] = torch.nextafter(nudged[5, 20], torch.tensor(10.0, dtype=torch.float64))
    changed = point_keys(11, Batch(nudged, y, 64, 0), X.device) != keys
    assert changed.tolist() == [i == 5 for i in range(64)]
    signed_zero = torch.zeros(2, 3, dtype=torch.float64)
    signed_zero[0, 1] = -0.0
    zk = point_keys(0, Batch(signed_zero, torch.zeros(2, dtype=torch.long), 2, 0), X.device)
    assert zk[0] == zk[1]


def _splitmix(z: int) -> int:
    m = 2**64
    z = (z + 0x9E3779B97F4A7C15) % m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return z ^ (z >> 31)


def test_row_checksum_is_the_integer_definition():
    """c_b = XOR_j mix(bits(x_bj) ^ mix(j)), written here with Python integers."""
    import struct

    from curvops.core.seeds import _row_checksums

    X = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for b in range(3):
        c = 0
        for j, x in enumerate(X[b].tolist()):
            bits = struct.unpack("<Q", struct.pack("<d", x))[0]
            c ^= _splitmix(bits ^ _splitmix(j))
        assert int(_row_checksums(X, 3)[b]) % 2**64 == c
