"""block_top_eigenvalues: per-block λ_max with sign, scores, zero / non-finite blocks."""

import json

import numpy as np
import pytest
from linalg_cases import TorchOp, block_diagonal, reference_hessian, with_spectrum
from scipy.sparse.linalg import aslinearoperator

from curvops.linalg.blocks import block_top_eigenvalues


def _blocks():
    rng = np.random.default_rng(0)
    return [
        np.array([[3.0]]),  # size 1
        with_spectrum([-7.0, 2.0], seed=1),  # largest |λ| is negative
        with_spectrum(np.concatenate([[12, 9], rng.uniform(-1, 1, 58)]), seed=2),  # ARPACK
        np.zeros((3, 3)),  # zero block
        with_spectrum([-4.0, -1.0, -0.5], seed=3),  # negative definite
    ]


@pytest.mark.parametrize("backend", ["arpack", "lanczos", "lobpcg"])
def test_values_signs_and_scores(backend):
    D, slices = block_diagonal(_blocks())
    res = block_top_eigenvalues(TorchOp(D, block_slices=slices), normalize=True, backend=backend)
    np.testing.assert_allclose(res.eigenvalues, [3, 2, 12, 0, -0.5], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(res.largest_magnitude, [3, -7, 12, 0, -4], rtol=1e-7)
    assert res.statuses == ["ok", "ok", "ok", "zero", "ok"]
    np.testing.assert_allclose(res.scores, [3 / 12, 2 / 12, 1, np.nan, 0.5 / 12], rtol=1e-7)
    assert res.names == ["b0", "b1", "b2", "b3", "b4"] and res.sizes == [1, 2, 60, 3, 3]
    assert res.converged.all() and res.n_matvecs > 0
    json.dumps(res.to_dict())


def test_non_finite_block_never_becomes_the_maximum():
    blocks = _blocks()
    blocks[2] = blocks[2].copy()
    blocks[2][0, 0] = np.nan
    D, slices = block_diagonal(blocks)
    with pytest.warns(RuntimeWarning, match="block 'b2' gets status 'non-finite': NaN or inf"):
        res = block_top_eigenvalues(TorchOp(D, block_slices=slices), normalize=True)
    assert res.statuses == ["ok", "ok", "non-finite", "zero", "ok"]
    assert np.isnan(res.scores[[2, 3]]).all()
    np.testing.assert_allclose(res.scores[[0, 1, 4]], [1, 2 / 3, 0.5 / 3])
    rows = res.rows()
    assert rows[2]["status"] == "non-finite" and np.isnan(rows[2]["score"])


def test_unnormalized_scores_are_magnitudes():
    D, slices = block_diagonal(_blocks())
    res = block_top_eigenvalues(TorchOp(D, block_slices=slices))
    np.testing.assert_allclose(res.scores, [3, 2, 12, np.nan, 0.5], rtol=1e-7)
    assert not res.normalized


def test_reference_net_blocks():
    """DESIGN §4 per-layer Hessian: 20 (W) and 100 (v)."""
    H = reference_hessian()
    slices = [slice(0, 4), slice(4, 6)]
    blocks = np.zeros_like(H)
    for s in slices:
        blocks[s, s] = H[s, s]
    res = block_top_eigenvalues(TorchOp(blocks, block_slices=slices, block_names=["W", "v"]))
    np.testing.assert_allclose(res.eigenvalues, [20, 100], rtol=1e-12)
    assert res.names == ["W", "v"]


def test_without_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="blocks='layer'"):
        block_top_eigenvalues(aslinearoperator(np.eye(3)))
