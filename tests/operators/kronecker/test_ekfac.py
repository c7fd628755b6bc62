"""EKFACOperator against dense float64 ground truth: E is the GGN's diagonal in KFAC's basis."""

import pytest
import torch
from kfac_models import dense_block_ggn, make, reference_net, rel_err

from curvops.operators.kronecker.correction import gramian_correction, per_example_correction
from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator
from curvops.operators.kronecker.operator import StaleOperatorError


def _kfac_basis(op: KFACOperator) -> torch.Tensor:
    """Block-diagonal Q = ⊕ Q_G ⊗ Q_A from eigh of KFAC's factors (independent of EKFAC)."""
    blocks = []
    for layer, G, A in zip(op.layers, op.G, op.A):
        QG = torch.linalg.eigh(G)[1]
        if A is not None:
            Q = torch.kron(QG, torch.linalg.eigh(A)[1])
            blocks.append(Q[_joint_order(*G.shape[:1], A.shape[0])] if layer.joint else Q)
        if layer.bias is not None and not layer.joint:
            blocks.append(QG)
    return torch.block_diag(*blocks)


def _joint_order(D2: int, D1: int) -> torch.Tensor:
    """Rows of vec_r([W | b]) (D2, D1) in the flat order [vec(W), b] of a joint block."""
    idx = torch.arange(D2 * D1).reshape(D2, D1)
    return torch.cat([idx[:, :-1].reshape(-1), idx[:, -1]])


def test_reference_net_exact():
    model, loss_fn, data = reference_net()
    K = EKFACOperator(model, loss_fn, data).to_dense()
    torch.testing.assert_close(K, dense_block_ggn(model, loss_fn, data), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "name,loss,separate",
    [
        ("mlp", "ce", True),
        ("cnn", "mse", False),
        ("cnn_pad", "ce", True),
        ("seq", "bce", True),
        ("mix", "ce", False),
    ],
)
def test_eigenvalues_are_the_ggn_diagonal_in_the_kfac_basis(name, loss, separate):
    model, loss_fn, data = make(name, loss)
    op = EKFACOperator(model, loss_fn, data, separate_weight_and_bias=separate)
    K, G = op.to_dense(), dense_block_ggn(model, loss_fn, data, separate)
    Q = _kfac_basis(KFACOperator(model, loss_fn, data, separate_weight_and_bias=separate))
    inner = Q.T @ K @ Q
    torch.testing.assert_close(inner, torch.diag(torch.diagonal(inner)), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        torch.diagonal(inner), torch.diagonal(Q.T @ G @ Q), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize("name", ["mlp", "cnn", "seq", "mix"])
def test_corrected_at_construction_and_closer_than_kfac(name):
    model, loss_fn, data = make(name, "ce")
    G = dense_block_ggn(model, loss_fn, data)
    kfac = KFACOperator(model, loss_fn, data).to_dense()
    ekfac = EKFACOperator(model, loss_fn, data).to_dense()
    assert rel_err(ekfac, kfac) > 1e-3  # never silently KFAC
    assert rel_err(ekfac, G) <= rel_err(kfac, G) + 1e-12


@pytest.mark.parametrize("name,approx", [("cnn", "expand"), ("cnn", "reduce"), ("seq", "expand")])
def test_per_example_and_gramian_strategies_agree(name, approx):
    model, loss_fn, data = make(name, "ce")
    dense = {}
    for c in ("per_example", "gramian", "lean"):
        op = EKFACOperator(model, loss_fn, data, correction=c, approx=approx)
        lean = {"lean", "per_example"} if name == "cnn" else {"per_example"}  # lean: convs only
        assert set(op.strategies.values()) == (lean if c == "lean" else {c})
        dense[c] = op.to_dense()
    torch.testing.assert_close(dense["per_example"], dense["gramian"], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(dense["per_example"], dense["lean"], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("groups", [1, 2])
def test_lean_correction_with_few_positions_takes_the_gramian_route(groups):
    """A 3x3 conv on 3x3 inputs (R = 1 position per point, d1 d2 >> R^2 (d1 + d2)): the lean
    correction's Gramian branch equals the per-example one and the dense block's diagonal."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 6, 3, groups=groups), torch.nn.Flatten(), torch.nn.Tanh(),
        torch.nn.Linear(6, 3),
    ).double()  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(7, 4, 3, 3, generator=gen, dtype=torch.float64),
             torch.randint(0, 3, (7,), generator=gen)) for _ in range(2)]  # fmt: skip
    loss_fn = torch.nn.CrossEntropyLoss()
    lean = EKFACOperator(model, loss_fn, data, correction="lean")
    per = EKFACOperator(model, loss_fn, data, correction="per_example")
    assert lean.strategies["0.weight"] == "lean"
    torch.testing.assert_close(lean.to_dense(), per.to_dense(), atol=1e-12, rtol=1e-10)
    G = dense_block_ggn(model, loss_fn, data)
    assert rel_err(lean.to_dense(), G) <= rel_err(KFACOperator(model, loss_fn, data).to_dense(), G)


def test_auto_strategy_picks_by_memory():
    model, loss_fn, data = make("cnn", "ce")
    op = EKFACOperator(model, loss_fn, data)
    # conv 0: a 3x3 kernel -> lean (no patches held); conv 2: R = 4, D1 + D2 = 14 -> lean too
    # (kernel 2x2); last Linear: R = 1 -> Gramian; conv biases: per-example
    assert op.strategies["0.weight"] == "lean" and op.strategies["4.weight"] == "gramian"
    assert op.strategies["0.bias"] == "per_example"


def test_correction_functions_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    bt = torch.randn(3, 5, 4, 2, generator=g, dtype=torch.float64)
    at = torch.randn(5, 4, 6, generator=g, dtype=torch.float64)
    grads = torch.einsum("knsi,nsj->knij", bt, at)
    expected = (grads**2).sum(dim=(0, 1))
    torch.testing.assert_close(per_example_correction(bt, at), expected)
    torch.testing.assert_close(gramian_correction(bt, at), expected)


def _step(model, loss_fn, data, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for X, y in data:
        loss_fn(model(X), y).backward()
    opt.step()


def test_refresh_after_a_step_eigh_and_qr():
    model, loss_fn, data = make("mlp", "ce")
    eigh_op = EKFACOperator(model, loss_fn, data)
    qr_op = EKFACOperator(model, loss_fn, data, eigenbasis="qr")
    torch.testing.assert_close(qr_op.to_dense(), eigh_op.to_dense())  # first bases by eigh
    _step(model, loss_fn, data)
    with pytest.raises(StaleOperatorError):
        eigh_op.trace()
    eigh_op.refresh()
    torch.testing.assert_close(eigh_op.to_dense(), EKFACOperator(model, loss_fn, data).to_dense())
    qr_op.refresh(steps=1)  # one warm-started QR step: close, not equal
    G = dense_block_ggn(model, loss_fn, data)
    assert rel_err(qr_op.to_dense(), G) < 0.5
    qr_op.refresh(steps=300)
    torch.testing.assert_close(qr_op.to_dense(), eigh_op.to_dense(), atol=1e-7, rtol=1e-6)


def test_compute_is_idempotent_and_bad_options():
    model, loss_fn, data = make("seq", "mse")
    op = EKFACOperator(model, loss_fn, data)
    before = op.to_dense()
    op.compute()
    torch.testing.assert_close(op.to_dense(), before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="eigenbasis"):
        EKFACOperator(model, loss_fn, data, eigenbasis="svd")
    with pytest.raises(ValueError, match="correction"):
        EKFACOperator(model, loss_fn, data, correction="x")
