"""compare(): exact vs approximate operators, dense route against hand-computed values."""

import json
from copy import deepcopy

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from kfac_models import make
from models import make_problem
from oracles import dense_ggn
from torch import nn

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


# ---------------------------------------------------------------- matching by parameter
def _mlp():
    model, loss_fn, data = make("mlp", "ce")
    l1, l2 = model[0], model[2]
    return model, loss_fn, data, l1, l2


def _indices(op, order) -> torch.Tensor:
    """The flat indices of ``order``'s parameters in ``op``'s flat vector, concatenated."""
    start, where = 0, {}
    for p in op.params:
        where[id(p)] = torch.arange(start, start + p.numel())
        start += p.numel()
    return torch.cat([where[id(p)] for p in order])


def test_reordered_params_give_the_same_report():
    model, loss_fn, data, l1, l2 = _mlp()
    natural = [l1.weight, l1.bias, l2.weight, l2.bias]
    shuffled = [l2.weight, l1.weight, l2.bias, l1.bias]
    G = curvops.GGNOperator(model, loss_fn, data)
    K = curvops.KFACOperator(model, loss_fn, data)
    ref = compare(G, {"KFAC": K}, k=4)
    DG, DK = dense_ggn(model, loss_fn, data, natural), K.to_dense()
    assert ref["KFAC"].frobenius_error == pytest.approx(
        float((DG - DK).norm() / DG.norm()), rel=1e-10
    )
    for exact_params, approx_params in ((shuffled, None), (None, shuffled), (shuffled, shuffled)):
        Gx = curvops.GGNOperator(model, loss_fn, data, params=exact_params)
        Kx = curvops.KFACOperator(model, loss_fn, data, params=approx_params)
        rep = compare(Gx, {"KFAC": Kx}, k=4)
        a, b = rep["KFAC"], ref["KFAC"]
        reordered = Gx.param_names != Kx.param_names
        assert a.matched_by == ("parameters, reordered" if reordered else "parameters")
        assert a.frobenius_error == pytest.approx(b.frobenius_error, rel=1e-10)
        assert a.trace == pytest.approx(b.trace, rel=1e-10)
        assert rep.exact_trace == pytest.approx(ref.exact_trace, rel=1e-10)
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-9)
        np.testing.assert_allclose(a.cosines, b.cosines, atol=1e-8)
        assert a.natural_gradient_cosine == pytest.approx(b.natural_gradient_cosine, rel=1e-8)
        assert a.block_errors.keys() == b.block_errors.keys()
        for name, err in b.block_errors.items():
            assert a.block_errors[name] == pytest.approx(err, rel=1e-9, abs=1e-14), name


def test_different_parameter_sets_of_equal_size_are_refused():
    model, loss_fn, data, l1, l2 = _mlp()
    G = curvops.GGNOperator(model, loss_fn, data, params=[l1.weight])  # 20 entries
    K = curvops.KFACOperator(model, loss_fn, data, params=[l2.weight, l1.bias])  # 15 + 5
    assert G.shape == K.shape
    with pytest.raises(ValueError, match=r"only in the exact operator: 0\.weight; only in KFAC: "):
        compare(G, K, k=2)
    with pytest.raises(ValueError, match=r"2\.weight, 0\.bias"):
        compare(G, K, k=2)
    copy = curvops.GGNOperator(deepcopy(model), loss_fn, data)  # same names, other tensors
    with pytest.raises(ValueError, match="matched by identity"):
        compare(curvops.GGNOperator(model, loss_fn, data), {"copy": copy}, k=2)


@pytest.mark.parametrize("dense_max", [3000, 10])  # the dense and the probe route
def test_blocks_not_grouped_by_layer_match_dense_truth(dense_max):
    model, loss_fn, data, l1, l2 = _mlp()
    order = [l2.weight, l1.weight, l2.bias, l1.bias]
    groups = [[l2.weight, l2.bias], [l1.weight, l1.bias]]  # not contiguous in ``order``
    exact = curvops.GGNOperator(model, loss_fn, data, params=order)
    block_ggn = curvops.GGNOperator(model, loss_fn, data, blocks=groups)
    kfac = curvops.KFACOperator(model, loss_fn, data, separate_weight_and_bias=False)
    rep = compare(exact, {"blocks": block_ggn, "KFAC": kfac}, k=3, dense_max=dense_max)
    DA = dense_ggn(model, loss_fn, data, order)
    perm = _indices(kfac, order)
    DK = kfac.to_dense()[perm[:, None], perm]  # KFAC in the exact order
    assert list(rep["blocks"].block_errors) == ["2.weight+2.bias", "0.weight+0.bias"]
    for name, group in zip(rep["blocks"].block_errors, groups):
        i = _indices(exact, group)
        A_bb, K_bb = DA[i[:, None], i], DK[i[:, None], i]
        assert rep["blocks"].block_errors[name] < 1e-10  # the block-diagonal GGN is exact
        truth = float((A_bb - K_bb).norm() / A_bb.norm())
        assert truth > 0.01
        if dense_max > exact.shape[0]:
            assert rep["KFAC"].block_errors[name] == pytest.approx(truth, rel=1e-9)
            assert rep.exact_block_norms[name] == pytest.approx(float(A_bb.norm()), rel=1e-9)
        else:  # a Hutchinson estimate from 100 probes
            assert rep["KFAC"].block_errors[name] == pytest.approx(truth, rel=0.3)
    assert rep.zero_blocks == []


def test_plain_linear_operators_are_matched_by_shape(ops):
    _, G, _ = ops
    rep = compare(G, {"dense": sla.aslinearoperator(G.to_dense().numpy())}, k=2)
    assert rep["dense"].matched_by == "shape"
    assert rep["dense"].frobenius_error < 1e-12
    assert list(rep["dense"].block_errors) == ["0", "2"]  # the blocks of the exact operator


# ---------------------------------------------------------------- zero exact blocks
class ShiftedNet(nn.Module):
    """An MLP whose ``shift`` layer adds one number to all logits: softmax ignores it, so the
    exact GGN block of shift.weight and shift.bias is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.shift = nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(5, 1)

    def forward(self, X):
        h = torch.tanh(self.body(X))
        return self.head(h) + self.shift(h)


def _shifted():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
        for n in (5, 3, 2)
    ]  # fmt: skip
    return ShiftedNet().double(), nn.CrossEntropyLoss(), data


@pytest.mark.parametrize("dense_max", [3000, 10])
def test_zero_exact_block_is_reported_plotted_and_serialised(dense_max, tmp_path):
    model, loss_fn, data = _shifted()
    zero = ["shift.weight", "shift.bias"]
    DA = dense_ggn(model, loss_fn, data)
    G = curvops.GGNOperator(model, loss_fn, data)
    assert float(DA[-6:, -6:].norm()) < 1e-12 * float(DA.norm())  # the truth: zero
    approx = {
        "KFAC": curvops.KFACOperator(model, loss_fn, data),
        "EKFAC": curvops.EKFACOperator(model, loss_fn, data),
    }
    rep = compare(G, approx, k=3, dense_max=dense_max)
    assert rep.zero_blocks == zero
    for a in rep.approximations:
        assert all(np.isnan(a.block_errors[b]) for b in zero)
        assert all(0 <= a.block_abs_errors[b] < 1e-10 for b in zero)
        assert all(np.isfinite(e) for b, e in a.block_errors.items() if b not in zero)
        assert a.block_status == {
            b: "zero exact block" if b in zero else "ok" for b in a.block_errors
        }
        assert np.isfinite(a.frobenius_error)
    text = rep.summary()
    assert "zero exact curvature, relative error undefined" in text and "shift.bias" in text
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    report = d["approximations"][0]
    assert report["block_errors"]["shift.weight"] is None
    assert report["block_status"]["shift.bias"] == "zero exact block"
    assert d["zero_blocks"] == zero
    fig = rep.plot(tmp_path / "zero.png")
    assert (tmp_path / "zero.png").stat().st_size > 10_000
    labels = [t.get_text() for t in fig.axes[1].texts]
    assert sum("zero exact block" in t for t in labels) == 2
    assert np.isfinite(fig.axes[1].get_ylim()).all()
