"""Layer spectra in lock-step: the same numbers as one eigensolve per block (and as dense
float64 truth), from fewer products (counted, never timed)."""

import numpy as np
import pytest
import torch
from linalg_cases import TorchOp, block_diagonal, with_spectrum
from oracles import dense_ggn, dense_hessian

import curvops
from curvops.core.errors import NotSymmetricError
from curvops.linalg.blocks import block_top_eigenvalues


def _blocks():
    rng = np.random.default_rng(0)
    return [
        np.array([[3.0]]),  # dense, size 1
        with_spectrum([-7.0, 2.0], seed=1),  # dense, largest |λ| negative
        with_spectrum(np.concatenate([[12, 9], rng.uniform(-1, 1, 58)]), seed=2),
        np.zeros((3, 3)),  # a zero dense block
        with_spectrum(np.concatenate([[-20, 5], rng.uniform(-1, 1, 98)]), seed=4),  # LM < 0
        with_spectrum(np.concatenate([np.linspace(1, 2, 50), rng.uniform(-0.1, 0.1, 150)]), 5),
        np.zeros((40, 40)),  # a zero Lanczos block
        with_spectrum(-np.linspace(0.5, 4, 45), seed=6),  # negative definite
    ]


def _op(blocks, diagonal=True):
    D, slices = block_diagonal(blocks)
    op = TorchOp(D, block_slices=slices)
    if diagonal:
        op.is_block_diagonal = True
    return op


def _truth(blocks):
    values = [np.linalg.eigvalsh(b) for b in blocks]
    return np.array([v[-1] for v in values]), np.array([v[np.argmax(np.abs(v))] for v in values])


def test_lockstep_equals_sequential_and_truth_with_fewer_products():
    blocks = _blocks()
    together = block_top_eigenvalues(_op(blocks), normalize=True)
    apart = block_top_eigenvalues(_op(blocks), normalize=True, lockstep=False)
    top, lm = _truth(blocks)
    for res in (together, apart):
        np.testing.assert_allclose(res.eigenvalues, top, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(res.largest_magnitude, lm, rtol=1e-6, atol=1e-9)
        assert res.converged.all()
    assert together.statuses == apart.statuses
    assert together.statuses[3] == together.statuses[6] == "zero"
    np.testing.assert_allclose(together.scores, apart.scores, rtol=1e-6)
    assert together.n_matvecs < apart.n_matvecs / 3


def test_the_rule_picks_lockstep_only_for_declared_block_diagonal_lanczos():
    blocks = _blocks()[:3]
    plain = block_top_eigenvalues(_op(blocks, diagonal=False))
    declared = block_top_eigenvalues(_op(blocks))
    arpack = block_top_eigenvalues(_op(blocks), backend="arpack")
    assert declared.n_matvecs < plain.n_matvecs
    np.testing.assert_allclose(declared.eigenvalues, plain.eigenvalues, rtol=1e-6)
    np.testing.assert_allclose(arpack.eigenvalues, plain.eigenvalues, rtol=1e-6)
    with pytest.raises(ValueError, match="is_block_diagonal"):
        block_top_eigenvalues(_op(blocks, diagonal=False), lockstep=True)


def test_dense_blocks_alone_take_as_many_products_as_the_largest():
    blocks = [with_spectrum([1.0, -3.0, 2.0], seed=1), np.array([[5.0]]), np.eye(7) * 2]
    res = block_top_eigenvalues(_op(blocks))
    assert res.n_matvecs == 7
    np.testing.assert_allclose(res.eigenvalues, [2, 5, 2], rtol=1e-12)
    np.testing.assert_allclose(res.largest_magnitude, [-3, 5, 2], rtol=1e-12)


def test_non_finite_block_in_lockstep():
    blocks = _blocks()
    blocks[5] = blocks[5].copy()
    blocks[5][0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="block 'b5' gets status 'non-finite': NaN or inf"):
        res = block_top_eigenvalues(_op(blocks))
    assert res.statuses[5] == "non-finite" and np.isnan(res.scores[5])
    top, _ = _truth([b for i, b in enumerate(blocks) if i != 5])
    np.testing.assert_allclose(np.delete(res.eigenvalues, 5), top, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("which", [1, 2])  # a dense block, a Lanczos block
def test_non_symmetric_block_is_refused_in_lockstep(which):
    blocks = _blocks()[:3]
    blocks[which] = blocks[which].copy()
    blocks[which][0, 1] += 1.0
    with pytest.raises(NotSymmetricError):
        block_top_eigenvalues(_op(blocks))


def _mlp():
    """Layer blocks of 70, 88 (Lanczos) and 27 (dense) parameters, float64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 8), torch.nn.Tanh(),
        torch.nn.Linear(8, 3),
    ).double()  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
        for n in (7, 5)
    ]  # fmt: skip
    return model, torch.nn.CrossEntropyLoss(), data


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_layer_spectra_of_curvops_operators_match_dense_truth(kind):
    model, loss_fn, data = _mlp()
    cls, dense = {
        "hessian": (curvops.HessianOperator, dense_hessian),
        "ggn": (curvops.GGNOperator, dense_ggn),
    }[kind]
    op = cls(model, loss_fn, data, blocks="layer")
    truth = dense(model, loss_fn, data)
    together = block_top_eigenvalues(op, tol=1e-10)
    apart = block_top_eigenvalues(op, tol=1e-10, lockstep=False)
    for i, s in enumerate(op.block_slices):
        values = torch.linalg.eigvalsh(truth[s, s]).numpy()
        for res in (together, apart):
            assert res.eigenvalues[i] == pytest.approx(values[-1], rel=1e-7, abs=1e-12)
            lm = values[np.argmax(np.abs(values))]
            assert res.largest_magnitude[i] == pytest.approx(lm, rel=1e-7, abs=1e-12)
    assert together.n_matvecs < apart.n_matvecs
