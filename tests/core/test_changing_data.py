"""Data that change from pass to pass: one fixed matrix, or a clear refusal.

A shuffling DataLoader yields the same points in another order: the same matrix. Another
subset per pass (shuffle with drop_last, a sampler) or random augmentation would give
another matrix per product: refused on the first pass that differs from the counting one.
"""

from __future__ import annotations

import pytest
import torch
from models import make_problem
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

import curvops
from curvops.core.checksum import PassChecksum

CHANGED = r"data changed between passes.*augmentation.*drop_last=True.*shuffle=False"
KINDS = ["hessian", "ggn", "mc", "empirical", "kfac", "ekfac"]


def _build(kind, model, loss_fn, data):
    if kind == "hessian":
        return curvops.HessianOperator(model, loss_fn, data)
    if kind in ("kfac", "ekfac"):
        cls = curvops.KFACOperator if kind == "kfac" else curvops.EKFACOperator
        return cls(model, loss_fn, data)
    return curvops.GGNOperator(model, loss_fn, data, mode={"ggn": "exact"}.get(kind, kind))


def _whole(data):
    return TensorDataset(torch.cat([X for X, _ in data]), torch.cat([y for _, y in data]))


def _loader(data, **kw):
    return DataLoader(_whole(data), generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_shuffled_loader_gives_the_same_matrix(kind):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    plain = _build(kind, model, loss_fn, data)
    shuffled = _build(kind, model, loss_fn, _loader(data, batch_size=4, shuffle=True))
    for _ in range(2):  # every pass another order
        torch.testing.assert_close(shuffled.to_dense(), plain.to_dense(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(shuffled.gradient(), plain.gradient(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_shuffle_with_drop_last_is_refused(kind):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")  # 10 points, batches of 4: 8 kept
    loader = _loader(data, batch_size=4, shuffle=True, drop_last=True)
    with pytest.raises(ValueError, match=CHANGED):
        op = _build(kind, model, loss_fn, loader)  # KFAC / EKFAC: their factor passes
        op.to_dense()


def test_a_sampler_that_picks_another_subset_is_refused():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    dataset = _whole(data)
    sampler = RandomSampler(dataset, num_samples=6, generator=torch.Generator().manual_seed(0))
    op = curvops.GGNOperator(model, loss_fn, DataLoader(dataset, batch_size=3, sampler=sampler))
    with pytest.raises(ValueError, match=CHANGED):
        op.to_dense()


class Augmented(Dataset):
    """A dataset with a random transform: noise, or a flip of the features (same values)."""

    def __init__(self, base: TensorDataset, transform: str) -> None:
        self.base, self.transform = base, transform
        self.gen = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        if self.transform == "noise":
            return x + 0.1 * torch.randn(x.shape, generator=self.gen, dtype=x.dtype), y
        flip = bool(torch.rand((), generator=self.gen) < 0.5)
        return (x.flip(-1) if flip else x), y


@pytest.mark.parametrize("transform", ["noise", "flip"])
@pytest.mark.parametrize("kind", ["hessian", "ggn", "kfac"])
def test_random_augmentation_is_refused(kind, transform):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    loader = DataLoader(Augmented(_whole(data), transform), batch_size=4)
    with pytest.raises(ValueError, match=CHANGED):
        op = _build(kind, model, loss_fn, loader)
        op.to_dense()


def test_fixed_augmentation_is_accepted():
    """A transform seeded per item (the same result every pass) is fixed data."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")

    class FixedNoise(Augmented):
        def __getitem__(self, i):
            x, y = self.base[i]
            gen = torch.Generator().manual_seed(i)
            return x + 0.1 * torch.randn(x.shape, generator=gen, dtype=x.dtype), y

    loader = DataLoader(FixedNoise(_whole(data), "noise"), batch_size=4, shuffle=True)
    op = curvops.GGNOperator(model, loss_fn, loader)
    torch.testing.assert_close(op.to_dense(), op.to_dense(), rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- the checksum itself
def _checksum(batches) -> PassChecksum:
    c = PassChecksum()
    for X, y in batches:
        c.add(X, y, X.shape[0])
    return c


def test_checksum_ignores_order_and_batching_in_float32():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2048, 784, generator=gen)
    y = torch.randint(0, 10, (2048,), generator=gen)
    ref = _checksum([(X[i : i + 128], y[i : i + 128]) for i in range(0, 2048, 128)])
    perm = torch.randperm(2048, generator=gen)
    Xp, yp = X[perm], y[perm]
    other = _checksum([(Xp[i : i + 100], yp[i : i + 100]) for i in range(0, 2048, 100)])
    assert other.same_as(ref) and ref.same_as(other)


@pytest.mark.parametrize("change", ["one_point", "flip", "labels", "noise"])
def test_checksum_sees_another_subset_or_other_values(change):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2048, 784, generator=gen)
    y = torch.randint(0, 10, (2048,), generator=gen)
    ref = _checksum([(X, y)])
    X2, y2 = X.clone(), y.clone()
    if change == "one_point":  # drop_last with shuffle: one point swapped for another
        X2[7] = torch.randn(784, generator=gen)
    elif change == "flip":
        X2 = X2.flip(-1)
    elif change == "labels":
        y2[:2] = y2[:2].flip(0) + 1
    else:
        X2 += 0.01 * torch.randn(X2.shape, generator=gen)
    assert not _checksum([(X2, y2)]).same_as(ref)


def test_denominators_are_remembered_only_while_the_targets_stand_still():
    """A list's target tensors are the same objects every pass: their d_b (CE, ignored
    labels) is read once; a target changed in place is counted again (and the pass refused)."""
    from curvops.core.data import DataLoop
    from curvops.core.denominators import loss_denominator

    calls = []
    count = loss_denominator(torch.nn.CrossEntropyLoss())

    def counting(y, size):
        calls.append(id(y))
        return count(y, size)

    y = torch.tensor([0, 1, -100, 2])
    loop = DataLoop([(torch.randn(4, 3), y)], torch.device("cpu"), torch.float32,
                    denominator=counting)  # fmt: skip
    assert loop.count() == (4, 3.0) and len(calls) == 1
    assert [b.denominator for b in loop] == [3.0] and len(calls) == 1  # remembered
    y[0] = -100  # in place: a new version of the same tensor
    seen = []
    with pytest.raises(ValueError, match=CHANGED):
        seen.extend(b.denominator for b in loop)
    assert seen == [2.0] and len(calls) == 2  # counted again, then the pass is refused
