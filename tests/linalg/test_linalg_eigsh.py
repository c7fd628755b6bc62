"""eigsh: every backend against numpy.linalg.eigvalsh (float64 dense ground truth)."""

import json
import warnings

import numpy as np
import pytest
import torch
from linalg_cases import TorchOp, indefinite_spectrum, reference_hessian, with_spectrum
from scipy.sparse.linalg import aslinearoperator

from curvops.linalg.eigsh import ConvergenceWarning, eigsh

BACKENDS = ["arpack", "lanczos", "lobpcg"]
D = with_spectrum(indefinite_spectrum())
EXACT = np.linalg.eigvalsh(D)[::-1]  # descending
CASES = {  # which, k -> the exact values expected, descending
    ("LA", 10): EXACT[:10],
    ("SA", 3): EXACT[-3:],
    ("BE", 6): np.concatenate([EXACT[:3], EXACT[-3:]]),
    ("LM", 5): np.sort(EXACT[np.argsort(-np.abs(EXACT))[:5]])[::-1],
}


def _check_pairs(res, expected, A, rtol=1e-6):
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=rtol)
    k = len(expected)
    V = res.eigenvectors
    assert V.shape == (A.shape[0], k)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-8)
    residuals = np.linalg.norm(A @ V - V * res.eigenvalues, axis=0)
    np.testing.assert_allclose(res.residual_norms, residuals, rtol=1e-6, atol=1e-12)
    assert res.all_converged and res.converged.shape == (k,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which,k", list(CASES))
def test_matches_eigvalsh(backend, which, k):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = eigsh(aslinearoperator(D), k=k, which=which, backend=backend)
    _check_pairs(res, CASES[which, k], D)
    assert res.backend == backend and res.which == which
    assert res.n_matvecs > k and res.seconds >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_result_for_every_operator_kind(backend):
    """aslinearoperator(numpy), a numpy array, a torch tensor and a torch_matmat class."""
    kinds = [aslinearoperator(D), D, torch.as_tensor(D), TorchOp(D)]
    results = [eigsh(op, k=4, backend=backend, seed=3) for op in kinds]
    for res in results[1:]:
        np.testing.assert_allclose(res.eigenvalues, results[0].eigenvalues, rtol=1e-12)
        np.testing.assert_allclose(
            np.abs(res.eigenvectors), np.abs(results[0].eigenvectors), atol=1e-8
        )
        assert res.n_matvecs == results[0].n_matvecs


@pytest.mark.parametrize("backend", BACKENDS)
def test_plus_minus_pair_at_the_top(backend):
    """±10 at the top: LA gives 10 then 7 (not −10); LM gives both of the pair."""
    rest = np.random.default_rng(1).uniform(-1, 1, 60)
    A = with_spectrum(np.concatenate([[10, -10, 7, 5], rest]), seed=1)
    la = eigsh(A, k=2, which="LA", backend=backend)
    np.testing.assert_allclose(la.eigenvalues, [10, 7], rtol=1e-8)
    lm = eigsh(A, k=2, which="LM", backend=backend)
    np.testing.assert_allclose(lm.eigenvalues, [10, -10], rtol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_net_full_hessian(backend):
    """DESIGN §4: 122.03, then +2√2 with which="LA" (the −2√2 partner is not the second)."""
    H = reference_hessian()
    res = eigsh(H, k=2, which="LA", backend=backend)
    np.testing.assert_allclose(res.eigenvalues, [122.0322497, 2 * np.sqrt(2)], rtol=1e-7)
    bottom = eigsh(H, k=2, which="SA", backend=backend)
    np.testing.assert_allclose(bottom.eigenvalues, [-2.0322497, -2 * np.sqrt(2)], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("P", [2, 3, 5])
def test_tiny_sizes(backend, P):
    A = with_spectrum(np.arange(1, P + 1) * (-1.0) ** np.arange(P), seed=P)
    exact = np.linalg.eigvalsh(A)[::-1]
    for which, expected in (("LA", exact[: P - 1]), ("SA", exact[1:])):
        res = eigsh(A, k=P - 1, which=which, backend=backend)
        np.testing.assert_allclose(res.eigenvalues, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_rank_plus_noise_float32(backend):
    """float32 torch operator: converges at the default tol (floored for float32)."""
    rng = np.random.default_rng(2)
    d = np.concatenate([[50, 40, 30, 20, 10], 0.1 * rng.standard_normal(195)])
    A = with_spectrum(d, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = eigsh(TorchOp(A, dtype=torch.float32), k=5, backend=backend)
    np.testing.assert_allclose(res.eigenvalues, [50, 40, 30, 20, 10], rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_and_v0(backend):
    A = aslinearoperator(D)
    a, b = eigsh(A, k=3, backend=backend, seed=5), eigsh(A, k=3, backend=backend, seed=5)
    np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)
    top = np.linalg.eigh(D)[1][:, -1]
    warm = eigsh(A, k=1, backend=backend, v0=top + 1e-9, seed=5)
    cold = eigsh(A, k=1, backend=backend, seed=5)
    assert warm.n_matvecs < cold.n_matvecs
    np.testing.assert_allclose(warm.eigenvalues, EXACT[:1], rtol=1e-10)


@pytest.mark.parametrize(
    "backend,options",
    [
        ("arpack", dict(max_iter=1, ncv=6)),
        ("lanczos", dict(max_iter=1, ncv=12)),
        ("lobpcg", dict(max_iter=2)),
    ],
)
def test_non_convergence_warns_and_returns_partial_result(backend, options):
    with pytest.warns(ConvergenceWarning, match=r"of 5 eigenpairs did not converge.*max_iter"):
        res = eigsh(D, k=5, which="SA", tol=1e-12, backend=backend, **options)
    assert res.eigenvalues.shape == (5,) and res.eigenvectors.shape == (D.shape[0], 5)
    assert not res.all_converged
    assert res.to_dict()["all_converged"] is False
    done = res.converged
    np.testing.assert_allclose(res.eigenvalues[done], EXACT[-5:][done], rtol=1e-8)


def test_to_dict_is_json_ready():
    res = eigsh(D, k=3)
    out = json.loads(json.dumps(res.to_dict(vectors=True)))
    assert out["eigenvalues"] == pytest.approx(list(EXACT[:3]))
    assert np.shape(out["eigenvectors"]) == (D.shape[0], 3)
    assert out["converged"] == [True] * 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), "0 < k < P = 150"),
        (dict(k=150), "0 < k < P = 150"),
        (dict(k=-2), "0 < k < P = 150"),
        (dict(k=2.5), "integer"),
        (dict(which="XX"), "'LA', 'SA', 'LM', 'BE'"),
        (dict(backend="magma"), "'arpack', 'lanczos', 'lobpcg'"),
        (dict(k=5, ncv=5), "k < ncv <= P"),
        (dict(tol=-1.0), "tol"),
        (dict(max_iter=0), "max_iter"),
        (dict(v0=np.ones(3)), "v0 has 3 entries"),
        (dict(v0=np.zeros(150)), "nonzero"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        eigsh(aslinearoperator(D), **kwargs)


def test_non_square():
    with pytest.raises(ValueError, match="square"):
        eigsh(np.ones((3, 4)), k=1)


def test_progress_bar_counts_products(capsys):
    res = eigsh(D, k=2, backend="lanczos", progress=True)
    assert "products" in capsys.readouterr().err
    np.testing.assert_allclose(res.eigenvalues, EXACT[:2], rtol=1e-8)
