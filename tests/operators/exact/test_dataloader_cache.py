"""The fast path for every data source: a DataLoader's batches kept on the device after the
first product (``DataLoop.keep_bytes``), so its graphs are reused as a list's; zero blocks
skipped in block-diagonal products. Against dense float64 truth."""

import pytest
import torch
from models import make_problem
from oracles import dense_ggn, dense_hessian
from torch.utils.data import DataLoader, Dataset

import curvops
from curvops.core.data import DataLoop

KINDS = {
    "hessian": (curvops.HessianOperator, dense_hessian),
    "ggn": (curvops.GGNOperator, dense_ggn),
}


class Counting(Dataset):
    """A TensorDataset that counts its item reads (to see when the loader is read)."""

    def __init__(self, X, y) -> None:
        self.X, self.y, self.reads = X, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return self.X[i], self.y[i]


def _loader(data, **kw):
    X, y = torch.cat([x for x, _ in data]), torch.cat([t for _, t in data])
    return DataLoader(Counting(X, y), batch_size=4, **kw)


def _close(A, B, rtol=1e-10):
    scale = B.abs().max().clamp(min=1e-12)
    assert (A - B).abs().max() <= rtol * scale, float((A - B).abs().max())


def _V(P, k=3):
    return torch.randn(P, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("kind", list(KINDS))
def test_loader_products_equal_the_list_and_dense_truth(kind):
    cls, dense = KINDS[kind]
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    loader = _loader(data)
    on_list, on_loader = cls(model, loss_fn, data), cls(model, loss_fn, loader)
    truth, V = dense(model, loss_fn, data), _V(on_list.shape[0])
    for _ in range(3):
        _close(on_loader.torch_matmat(V), truth @ V)
        _close(on_loader.torch_matmat(V), on_list.torch_matmat(V))
    assert on_loader._loop.kept is not None  # replayed from the second product on
    assert on_loader._cache.enabled and on_loader._cache.complete
    assert len(on_loader._cache.entries) == len(on_loader._loop.kept)


def test_loader_is_read_twice_then_replayed():
    """The counting pass and the first product read the loader; later products do not."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    loader = _loader(data)
    op = curvops.HessianOperator(model, loss_fn, loader)
    V = _V(op.shape[0], 1)[:, 0]
    points = sum(len(y) for _, y in data)
    first = loader.dataset.reads  # construction: the counting pass and one batch (RNG check)
    op.torch_matmat(V)
    assert loader.dataset.reads == first + points
    for _ in range(3):
        op.torch_matmat(V)
    assert loader.dataset.reads == first + points


def test_shuffled_loader_is_kept_as_one_partition():
    """shuffle=True, drop_last=False: each pass another partition of the same points, so
    per-batch reuse across passes is impossible; the first product's pass (checked against
    the counting one) is kept, and every later product uses that one partition."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    loader = _loader(data, shuffle=True, generator=torch.Generator().manual_seed(0))
    op = curvops.GGNOperator(model, loss_fn, loader)
    truth, V = dense_ggn(model, loss_fn, data), _V(op.shape[0])
    for _ in range(3):
        _close(op.torch_matmat(V), truth @ V)
    assert op._loop.kept is not None and op._cache.complete


def test_a_list_on_the_device_is_never_kept():
    """A list's own tensors are used as they are: in-place edits are followed, not frozen."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.HessianOperator(model, loss_fn, data)
    op.torch_matmat(_V(op.shape[0]))
    assert op._loop.kept is None and op._cache.complete


def test_a_cast_list_is_kept():
    """float32 batches for a float64 model: a new tensor per pass, so the pass is kept."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    data32 = [(X.float(), y) for X, y in data]
    op = curvops.HessianOperator(model, loss_fn, data32)
    truth = dense_hessian(model, loss_fn, [(X.double(), y) for X, y in data32])
    V = _V(op.shape[0])
    for _ in range(2):
        _close(op.torch_matmat(V), truth @ V)
    assert op._loop.kept is not None and op._cache.complete


def test_keep_budget_and_off_switch():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    loop = DataLoop(_loader(data), torch.device("cpu"), torch.float64, keep_bytes=1)
    loop.count()
    list(loop)
    assert loop.kept is None  # over the budget: read every pass
    off = curvops.HessianOperator(model, loss_fn, _loader(data), graph_cache_mib=0)
    off.torch_matmat(_V(off.shape[0]))
    assert off._loop.keep_bytes == 0 and off._loop.kept is None


class Noisy(Counting):
    """Random augmentation: other values every pass."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.randn(x.shape, dtype=x.dtype), y


def test_changed_loader_data_is_still_refused_before_keeping():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    X, y = torch.cat([x for x, _ in data]), torch.cat([t for _, t in data])
    op = curvops.HessianOperator(model, loss_fn, DataLoader(Noisy(X, y), batch_size=4))
    with pytest.raises(ValueError, match="data changed between passes"):
        op.torch_matmat(_V(op.shape[0]))
    assert op._loop.kept is None


# ---------------------------------------------------------------- zero blocks skipped
@pytest.mark.parametrize("kind", list(KINDS))
def test_block_products_with_zero_blocks_equal_dense_truth(kind):
    """Blocks whose directions are zero are skipped; the product is the block-diagonal
    truth, and an all-zero direction costs no data pass."""
    cls, dense = KINDS[kind]
    model, loss_fn, data = make_problem("cnn", "ce")
    op = cls(model, loss_fn, data, blocks="layer")
    truth = dense(model, loss_fn, data)
    diag = torch.zeros_like(truth)
    for s in op.block_slices:
        diag[s, s] = truth[s, s]
    V = _V(op.shape[0], 2)
    V[op.block_slices[0]] = 0  # one block without directions
    V[op.block_slices[2], 1] = 0  # one block zero in one column only
    _close(op.torch_matmat(V), diag @ V)
    _close(op.torch_matmat(V[:, 1]), diag @ V[:, 1])
    reads = op._loop.last
    zero = torch.zeros(op.shape[0], dtype=torch.float64)
    assert bool((op.torch_matmat(zero) == 0).all())
    assert op._loop.last is reads  # no pass over the data
