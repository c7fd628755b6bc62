"""compare(): exact vs approximate operators, dense route against hand-computed values."""

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from models import make_problem

import curvops
from curvops.compare import compare


@pytest.fixture
def ops():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    H = curvops.HessianOperator(model, loss_fn, data, blocks="layer")
    G = curvops.GGNOperator(model, loss_fn, data, blocks="layer")
    E = curvops.GGNOperator(model, loss_fn, data, blocks="layer", mode="empirical")
    return H, G, E


def test_dense_route_matches_hand_computation(ops):
    _, G, E = ops
    rep = compare(G, {"EF": E}, k=4)
    DG, DE = G.to_dense(), E.to_dense()
    ef = rep["EF"]
    assert rep.method == "dense"
    np.testing.assert_allclose(ef.frobenius_error, float((DG - DE).norm() / DG.norm()), rtol=1e-10)
    np.testing.assert_allclose(rep.exact_trace, float(DG.trace()), rtol=1e-10)
    np.testing.assert_allclose(ef.trace, float(DE.trace()), rtol=1e-10)
    np.testing.assert_allclose(
        rep.exact_eigenvalues, np.linalg.eigvalsh(DG.numpy())[::-1][:4], rtol=1e-9
    )
    UG = np.linalg.eigh(DG.numpy())[1][:, ::-1][:, :4]
    UE = np.linalg.eigh(DE.numpy())[1][:, ::-1][:, :4]
    np.testing.assert_allclose(
        np.sort(ef.cosines), np.sort(np.linalg.svd(UG.T @ UE, compute_uv=False)), atol=1e-8
    )
    assert 0 <= ef.overlap <= 1
    s = G.block_slices[0]
    np.testing.assert_allclose(
        ef.block_errors["0"], float((DG[s, s] - DE[s, s]).norm() / DG[s, s].norm()), rtol=1e-10
    )
    g = G.gradient()
    lam = rep.damping
    eye = torch.eye(G.shape[0], dtype=torch.float64)
    a, b = torch.linalg.solve(DG + lam * eye, g), torch.linalg.solve(DE + lam * eye, g)
    np.testing.assert_allclose(
        ef.natural_gradient_cosine, float(a @ b / (a.norm() * b.norm())), rtol=1e-8
    )


def test_identical_operator_is_perfect(ops):
    _, G, _ = ops
    rep = compare(G, G, k=3)
    a = rep.approximations[0]
    assert a.frobenius_error == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(a.cosines, 1, atol=1e-8)
    assert a.natural_gradient_cosine == pytest.approx(1, abs=1e-10)


def test_several_approximations_and_outputs(ops):
    H, G, E = ops
    rep = compare(H, [G, E], k=3)
    assert [a.name for a in rep.approximations] == ["GGN", "GGN_2"]
    d = rep.to_dict()
    import json

    json.dumps(d)
    assert "rel. Frobenius error" in rep.summary()


def test_any_linear_operator_and_errors(ops):
    _, G, _ = ops
    D = G.to_dense().numpy()
    rep = compare(sla.aslinearoperator(D), sla.aslinearoperator(D + 0.01 * np.eye(len(D))), k=2)
    assert rep.approximations[0].frobenius_error > 0
    assert rep.approximations[0].natural_gradient_cosine is None  # no gradient known
    with pytest.raises(ValueError, match="compare needs one shape"):
        compare(G, sla.aslinearoperator(np.eye(3)))
    with pytest.raises(ValueError, match="k must be in"):
        compare(G, G, k=0)
