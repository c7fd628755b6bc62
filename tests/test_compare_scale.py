"""compare() at scale: the probe route against the dense route within its stated standard
errors, per-block estimators ("pairs", "direct", "restricted"), the stated cost, and no
O(P²) work on a large operator."""

import math

import numpy as np
import pytest
import torch

import curvops
from curvops.compare import compare
from curvops.compare.cost import dense_bytes, probe_bytes
from curvops.compare.probes import Probes, pair_estimate


def _problem():
    """A 6-12-10-3 tanh MLP (P = 247), float64, CE, two batches."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10), torch.nn.Tanh(),
        torch.nn.Linear(10, 3),
    ).double()  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
        for n in (16, 9)
    ]  # fmt: skip
    return model, torch.nn.CrossEntropyLoss(), data


def _within(estimate, stderr, truth, sigmas=4.0, atol=1e-9):
    assert abs(estimate - truth) <= sigmas * stderr + atol, (estimate, stderr, truth)


@pytest.fixture(scope="module")
def ops():
    model, loss_fn, data = _problem()
    G = curvops.GGNOperator(model, loss_fn, data)
    approx = {
        "KFAC": curvops.KFACOperator(model, loss_fn, data),
        "EKFAC": curvops.EKFACOperator(model, loss_fn, data),
    }
    return model, loss_fn, data, G, approx


@pytest.mark.parametrize("block_probes", [0, 60])  # pairs of shared probes / restricted
def test_probe_route_matches_dense_route_within_stated_errors(ops, block_probes):
    *_, G, approx = ops
    dense = compare(G, approx, k=3)
    probe = compare(G, approx, k=3, dense_max=0, n_probes=200, block_probes=block_probes)
    assert dense.method == "dense" and probe.method == "hutchinson"
    _within(probe.exact_trace, probe.exact_trace_stderr, dense.exact_trace)
    np.testing.assert_allclose(probe.exact_eigenvalues, dense.exact_eigenvalues, rtol=1e-4)
    how = "restricted" if block_probes else "pairs"
    assert probe.cost["block_estimator"] == {"exact": how, "KFAC": how, "EKFAC": how}
    for name in approx:
        d, p = dense[name], probe[name]
        _within(p.frobenius_error, p.frobenius_stderr, d.frobenius_error)
        np.testing.assert_allclose(p.eigenvalues, d.eigenvalues, rtol=1e-4)
        np.testing.assert_allclose(np.sort(p.cosines), np.sort(d.cosines), atol=1e-3)
        assert p.natural_gradient_cosine == pytest.approx(d.natural_gradient_cosine, abs=1e-3)
        assert len(probe.unresolved_blocks) <= 1  # the smallest block (0.bias) at most
        for block, truth in d.block_errors.items():
            if block in probe.unresolved_blocks:
                assert math.isnan(p.block_errors[block])
                continue
            _within(p.block_errors[block], p.block_stderrs[block], truth)


def test_direct_estimator_for_block_diagonal_operators(ops):
    """A block-diagonal exact operator: each product gives every block's A_bb z_b."""
    model, loss_fn, data, _, approx = ops
    G = curvops.GGNOperator(model, loss_fn, data, blocks="layer")
    dense = compare(G, approx, k=2)
    probe = compare(G, approx, k=2, dense_max=0, n_probes=200)
    assert set(probe.cost["block_estimator"].values()) == {"direct"}
    for name in approx:
        for block, truth in dense[name].block_errors.items():
            _within(probe[name].block_errors[block], probe[name].block_stderrs[block], truth)


def test_restricted_probes_are_exact_where_the_blocks_agree(ops):
    model, loss_fn, data, G, _ = ops
    blocky = curvops.GGNOperator(model, loss_fn, data, blocks="layer")
    rep = compare(G, {"blocks": blocky}, k=2, dense_max=0, n_probes=20, block_probes=20)
    assert max(rep["blocks"].block_errors.values()) < 1e-10


def test_the_cost_is_stated(ops):
    *_, G, approx = ops
    P = G.shape[0]
    dense = compare(G, approx, k=3)
    assert dense.cost["products"] == {"exact": P, "KFAC": P, "EKFAC": P}
    assert dense.cost["memory_estimate_mib"] == round(dense_bytes(P, 2) / 2**20, 1)
    probe = compare(G, approx, k=3, dense_max=0, n_probes=30, block_probes=0)
    products = probe.cost["products"]
    solve = probe.cost["solve"]
    assert products["exact"] <= 30 + 300 * 20 + solve["iterations"]
    assert products["KFAC"] >= 30 and solve["residual"] <= 1e-4 and solve["method"] == "CG"
    assert "products: exact" in probe.summary()
    pre = compare(G, approx, k=3, dense_max=0, n_probes=30, block_probes=0, precondition=True)
    assert pre.cost["solve"]["method"] == "CG preconditioned by KFAC"
    assert pre.cost["solve"]["residual"] <= 1e-4
    for name in approx:
        assert pre[name].natural_gradient_cosine == pytest.approx(
            probe[name].natural_gradient_cosine, abs=1e-4
        )


def test_eig_maxiter_bounds_the_spectral_products(ops):
    """eigsh's cycles bound the exact operator's spectral products; KFAC / EKFAC give theirs
    in closed form (no products beyond the probes), equal to eigsh's."""
    *_, G, approx = ops
    free = compare(G, approx, k=3, dense_max=0, n_probes=10, block_probes=0, ncv=8)
    assert free.cost["eigsh_converged"] == {"exact": True, "KFAC": True, "EKFAC": True}
    assert free.cost["spectra"] == {"exact": "eigsh", "KFAC": "closed form", "EKFAC": "closed form"}
    assert free.cost["products"]["KFAC"] == 10 and free.cost["products"]["EKFAC"] == 10
    dense = compare(G, approx, k=3)  # eigh of the dense matrices
    for name in approx:
        np.testing.assert_allclose(free[name].eigenvalues, dense[name].eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(free[name].cosines, dense[name].cosines, atol=1e-6)
    with pytest.warns(UserWarning):  # one cycle of ncv = 8 does not converge the top 3
        tight = compare(G, approx, k=3, dense_max=0, n_probes=10, block_probes=0, ncv=8,
                        eig_maxiter=1, tol=1e-10)  # fmt: skip
    assert tight.cost["eigsh_converged"] == {"exact": False, "KFAC": True, "EKFAC": True}
    solve = tight.cost["solve"]["iterations"]
    assert tight.cost["products"]["exact"] <= 10 + 8 + solve + 1  # probes, one cycle, CG
    with pytest.raises(ValueError, match="eig_maxiter must be an integer >= 1"):
        compare(G, approx, k=3, dense_max=0, eig_maxiter=0)


def test_probe_memory_is_linear_in_P():
    small, large = (probe_bytes(P, 4, 2, 10, 21, 1, 100) for P in (10**6, 10**7))
    assert large == pytest.approx(10 * small, rel=1e-6)


class Diagonal:
    """diag(d) as the smallest torch operator (P large, products cheap)."""

    def __init__(self, d: torch.Tensor) -> None:
        self.d, self.shape = d, (len(d), len(d))
        self.dtype, self.device = np.dtype("float32"), torch.device("cpu")
        self.is_psd = True

    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        return self.d[:, None] * M if M.ndim == 2 else self.d * M


def test_a_large_operator_takes_the_probe_route_without_dense_work():
    P = 400_000  # P² float64 would be 1.3 TB
    d = torch.linspace(0.0, 1.0, P)
    d[-2:] = torch.tensor([3.0, 5.0])  # a separated top: few Lanczos steps
    rep = compare(Diagonal(d), {"half": Diagonal(d / 2)}, k=2, n_probes=8, tol=1e-3)
    assert rep.method == "hutchinson"
    assert rep["half"].frobenius_error == pytest.approx(0.5, rel=1e-6)  # exact: diagonal
    assert rep.exact_trace == pytest.approx(float(d.sum()), rel=1e-5)
    assert rep.cost["memory_estimate_mib"] < 1000


def test_pair_estimator_is_unbiased_for_a_diagonal_block():
    """E[m_ij m_ji] = ‖M_bb‖²_F with m_ij = z_{i,b}ᵀ (M z_j)_b: checked on a dense M."""
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    M = M + M.T
    b = torch.arange(10)
    Z = Probes(30, 400, 0, torch.device("cpu"))
    Zf = Z.columns(0, 400, torch.float64)
    G = Zf[b].T @ (M @ Zf)[b]
    theta, loo = pair_estimate(G)
    se = math.sqrt((len(loo) - 1) / len(loo) * float(((loo - loo.mean()) ** 2).sum()))
    _within(theta, se, float(M[:10, :10].square().sum()))


def test_blocks_the_probes_cannot_resolve_are_never_called_zero(ops):
    """With 6 shared probes the pair estimates of ‖A_bb‖² are within their noise of 0 (some
    negative): those blocks are listed as unresolved with NaN relative errors, not as blocks
    of zero curvature (the dense route: every block is nonzero)."""
    *_, G, approx = ops
    dense = compare(G, approx, k=3)
    assert dense.zero_blocks == [] and dense.unresolved_blocks == []
    assert min(dense.exact_block_norms.values()) > 0.01
    few = compare(G, approx, k=3, dense_max=0, n_probes=6, block_probes=0)
    assert few.zero_blocks == []
    assert few.unresolved_blocks  # noisy at 6 probes
    for name in approx:
        assert all(math.isnan(few[name].block_errors[b]) for b in few.unresolved_blocks)
        hit = {few[name].block_structures[b] for b in few.unresolved_blocks}
        assert hit and all(math.isnan(few[name].structure_errors[s]) for s in hit)
    assert "do not resolve" in few.summary() and "zero exact curvature" not in few.summary()
    many = compare(G, approx, k=3, dense_max=0, n_probes=100, block_probes=0)
    assert len(many.unresolved_blocks) < len(few.unresolved_blocks)
    restricted = compare(G, approx, k=3, dense_max=0, n_probes=6, block_probes=6)
    assert restricted.unresolved_blocks == []  # per-block probes: a positive sum of squares
