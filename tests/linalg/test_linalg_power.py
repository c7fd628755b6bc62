"""Deflated power iteration: true eigenvalues with momentum (not λ − β), near ties flagged."""

import json
import warnings

import numpy as np
import pytest
from linalg_cases import TorchOp, with_spectrum
from scipy.sparse.linalg import aslinearoperator

from curvops.linalg.eigsh import ConvergenceWarning
from curvops.linalg.power import NearTieWarning, power_iteration

REST = np.random.default_rng(0).uniform(-1, 1, 75)
A = with_spectrum(np.concatenate([[10, 8, 6, 4, 2], REST]))


@pytest.mark.parametrize("momentum", [0.0, 16.0])  # 16 = λ_2² / 4
@pytest.mark.parametrize("kind", [aslinearoperator, TorchOp])
def test_reports_true_eigenvalues(momentum, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = power_iteration(kind(A), k=3, momentum=momentum, max_iter=500)
    np.testing.assert_allclose(res.eigenvalues, [10, 8, 6], rtol=1e-6)  # not 10 − β
    V = res.eigenvectors
    np.testing.assert_allclose(np.abs(V.T @ V), np.eye(3), atol=1e-4)
    np.testing.assert_allclose(
        res.residual_norms, np.linalg.norm(A @ V - V * res.eigenvalues, axis=0), rtol=1e-6
    )
    assert res.all_converged and not res.any_near_tie and res.momentum == momentum


def test_momentum_accelerates():
    plain = power_iteration(A, k=3, max_iter=500)
    fast = power_iteration(A, k=3, momentum=16.0, max_iter=500)
    assert fast.n_matvecs < 0.7 * plain.n_matvecs
    assert np.all(fast.ratios < plain.ratios)


def test_largest_magnitude_not_largest_value():
    B = with_spectrum(np.concatenate([[5, -9, 1], REST[:20] / 10]), seed=3)
    res = power_iteration(B, k=1)
    np.testing.assert_allclose(res.eigenvalues, [-9], rtol=1e-6)


@pytest.mark.parametrize("partner", [-10.0, -9.995])
def test_plus_minus_pair_is_flagged(partner):
    B = with_spectrum(np.concatenate([[10, partner, 5], REST[:40]]), seed=4)
    with pytest.warns(NearTieWarning, match="eigsh\\(op, which='LA'\\)"):
        res = power_iteration(B, k=1)
    assert res.near_tie.tolist() == [True] and not res.all_converged
    np.testing.assert_allclose(np.sort(res.tie_values[0]), [partner, 10], rtol=1e-3)
    assert res.ratios[0] > 0.9
    json.dumps(res.to_dict())


def test_non_convergence_without_tie_warns():
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = power_iteration(A, k=1, max_iter=3)
    assert not res.all_converged


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), "0 < k <= P = 80"),
        (dict(k=81), "0 < k <= P = 80"),
        (dict(max_iter=0), "max_iter"),
        (dict(momentum=-1.0), "momentum"),
        (dict(tol=-1e-3), "tol"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        power_iteration(A, **kwargs)
