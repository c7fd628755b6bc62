"""The spectral algorithms on real curvops operators, against their dense matrices (float64)."""

import numpy as np
import pytest
import torch
from linalg_cases import one_torch_thread
from torch import nn

try:
    from curvops.operators import HessianOperator
except ImportError as err:  # the operators are built in parallel with the algorithms
    pytest.skip(f"curvops.operators is not importable: {err}", allow_module_level=True)

from curvops.linalg.blocks import block_top_eigenvalues
from curvops.linalg.eigsh import eigsh
from curvops.linalg.power import power_iteration
from curvops.linalg.trace import hutchinson_trace, hutchpp_trace

BACKENDS = ["arpack", "lanczos", "lobpcg"]


@pytest.fixture(scope="module")
def digits_problem():
    """64-16-10 tanh MLP (P = 1,210) trained briefly on 600 digits, float64, batches 350/250."""
    datasets = pytest.importorskip("sklearn.datasets")
    with one_torch_thread():
        return _train_digits_mlp(datasets)


def _train_digits_mlp(datasets):
    digits = datasets.load_digits()
    X = torch.tensor(digits.data[:600], dtype=torch.float64) / 16
    y = torch.tensor(digits.target[:600])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model, nn.CrossEntropyLoss(), [(X[:350], y[:350]), (X[350:], y[350:])]


@pytest.fixture(scope="module")
def digits_hessian(digits_problem):
    H = HessianOperator(*digits_problem)
    with one_torch_thread():
        dense = H.to_dense().numpy()
    return H, dense, np.linalg.eigvalsh(dense)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which,k", [("LA", 10), ("SA", 3), ("BE", 6)])
def test_digits_mlp_matches_dense(digits_hessian, backend, which, k):
    H, dense, ev = digits_hessian
    expected = {
        "LA": ev[-10:][::-1],
        "SA": ev[:3][::-1],
        "BE": np.concatenate([ev[-3:][::-1], ev[:3][::-1]]),
    }[which]
    res = eigsh(H, k=k, which=which, backend=backend)
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=1e-6)
    V = res.eigenvectors
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-8)
    np.testing.assert_allclose(
        res.residual_norms, np.linalg.norm(dense @ V - V * res.eigenvalues, axis=0), atol=1e-10
    )
    assert res.all_converged
    shapes = [t.shape for t in H.unflatten(V[:, 0])]
    assert shapes == [p.shape for p in H.params]


def test_digits_mlp_blocks_trace_and_power(digits_problem, digits_hessian):
    _, dense, ev = digits_hessian
    Hb = HessianOperator(*digits_problem, blocks="layer")
    res = block_top_eigenvalues(Hb, normalize=True)
    expected = [np.linalg.eigvalsh(dense[s, s])[-1] for s in Hb.block_slices]
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=1e-6)
    assert res.statuses == ["ok", "ok"] and np.nanmax(res.scores) == 1
    H = digits_hessian[0]
    for est in (hutchinson_trace(H, n_probes=30), hutchpp_trace(H, n_matvecs=30)):
        assert abs(est.estimate - np.trace(dense)) < 4 * est.std_error
    top = power_iteration(H, k=1, max_iter=400)
    np.testing.assert_allclose(top.eigenvalues, ev[-1:], rtol=1e-6)


def _reference_net():
    """DESIGN §4: W = [[2,3],[4,1]], v = [2,1], x = [1,1], y = 14, no biases, MSE."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 3.0], [4.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[2.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[14.0]], dtype=torch.float64)
    return model, nn.MSELoss(), [(x, y)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_net_full_hessian(backend):
    """122.03, then +2√2 (its −2√2 partner is the bottom, not the second largest)."""
    H = HessianOperator(*_reference_net())
    res = eigsh(H, k=2, which="LA", backend=backend)
    np.testing.assert_allclose(res.eigenvalues, [122.0322497, 2 * np.sqrt(2)], rtol=1e-7)
    both = eigsh(H, k=2, which="BE", backend=backend)
    np.testing.assert_allclose(both.eigenvalues, [122.0322497, -2 * np.sqrt(2)], rtol=1e-7)


def test_reference_net_blocks():
    Hb = HessianOperator(*_reference_net(), blocks="layer")
    res = block_top_eigenvalues(Hb)
    np.testing.assert_allclose(res.eigenvalues, [20, 100], rtol=1e-10)
    top2 = eigsh(Hb, k=2, which="LA")
    np.testing.assert_allclose(top2.eigenvalues, [100, 20], rtol=1e-10)
    u = top2.eigenvectors[:, 1] * np.sign(top2.eigenvectors[0, 1])
    np.testing.assert_allclose(u, np.array([2, 2, 1, 1, 0, 0]) / np.sqrt(10), atol=1e-8)
