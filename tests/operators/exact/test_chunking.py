"""``chunk_size`` on every operator: chunked == unchunked == dense float64 ground truth, and no
step of a product ever sees more than ``chunk_size`` columns."""

import math

import numpy as np
import pytest
import torch
from models import make_problem
from oracles import dense_empirical_fisher, dense_ggn, dense_hessian

import curvops

K = 7
CHUNKS = [None, 1, 3]
KINDS = [
    "hessian",
    "hessian_forward_over_reverse",
    "hessian_blocks",
    "ggn",
    "ggn_forward",
    "mc",
    "empirical",
    "kfac",
    "ekfac",
]


def build(kind, model, loss_fn, data, **kw):
    if kind.startswith("hessian"):
        hvp = "forward_over_reverse" if kind.endswith("reverse") else "double_backward"
        blocks = "layer" if kind == "hessian_blocks" else None
        return curvops.HessianOperator(model, loss_fn, data, hvp=hvp, blocks=blocks, **kw)
    if kind == "kfac":
        return curvops.KFACOperator(model, loss_fn, data, **kw)
    if kind == "ekfac":
        return curvops.EKFACOperator(model, loss_fn, data, **kw)
    if kind == "ggn_forward":
        return curvops.GGNOperator(model, loss_fn, data, jvp="forward", **kw)
    mode = {"ggn": "exact"}.get(kind, kind)
    return curvops.GGNOperator(model, loss_fn, data, mode=mode, **kw)


def dense_truth(kind, op, model, loss_fn, data):
    """The operator's matrix, built independently of its product code (float64)."""
    if kind.startswith("ggn"):
        return dense_ggn(model, loss_fn, data)
    if kind == "empirical":
        return dense_empirical_fisher(model, loss_fn, data)
    if kind == "kfac":
        return kfac_dense(op)
    if kind == "ekfac":
        return ekfac_dense(op)
    if kind == "mc":  # sampled labels: no closed form; the unchunked product column by column
        return torch.stack([op.torch_matmat(e) for e in torch.eye(op.shape[0]).double()], 1)
    H = dense_hessian(model, loss_fn, data)
    if kind != "hessian_blocks":
        return H
    out = torch.zeros_like(H)
    for s in op.block_slices:
        out[s, s] = H[s, s]
    return out


def kfac_dense(op):
    """Block diagonal with G ⊗ A per weight and G per bias (separate weight and bias)."""
    D = torch.zeros(op.shape, dtype=torch.float64)
    slices = op.layout.slices
    for layer, G, A in zip(op.layers, op.G, op.A):
        if layer.weight is not None:
            D[slices[layer.weight], slices[layer.weight]] = torch.kron(G, A)
        if layer.bias is not None:
            D[slices[layer.bias], slices[layer.bias]] = G
    return D


def ekfac_dense(op):
    """Block diagonal with (Q_G ⊗ Q_A) diag(E) (Q_G ⊗ Q_A)ᵀ per weight, Q_G diag(E) Q_Gᵀ per bias."""
    D = torch.zeros(op.shape, dtype=torch.float64)
    slices = op.layout.slices
    for layer, (basis_g, basis_a), E in zip(op.layers, op._bases, op.E):
        parts = []
        if layer.weight is not None:
            parts.append((layer.weight, torch.kron(basis_g[1], basis_a[1])))
        if layer.bias is not None:
            parts.append((layer.bias, basis_g[1]))
        for (index, Q), e in zip(parts, E):
            D[slices[index], slices[index]] = Q @ torch.diag(e.reshape(-1)) @ Q.T
    return D


def spy_widths(op, kind):
    """Record the number of columns of every chunk the operator processes."""
    widths = []
    name = "_apply_blocks" if kind in ("kfac", "ekfac") else "_chunk_matmat"
    inner = getattr(op, name)

    def spy(*args):
        M = args[-2] if name == "_apply_blocks" else args[0]
        widths.append(1 if M.ndim == 1 else M.shape[1])
        return inner(*args)

    setattr(op, name, spy)
    return widths


# conv nets: the full Hessian's batched double backward through Conv2d is slow on CPU (that
# is why ColumnPlan multiplies their columns one by one); its blocks cover the conv path
CASES = [(kind, "mlp_tanh") for kind in KINDS] + [
    (kind, "cnn") for kind in ("hessian_blocks", "ggn", "kfac", "ekfac")
]


@pytest.mark.parametrize("kind, name", CASES)
def test_chunked_equals_unchunked_equals_dense(kind, name):
    model, loss_fn, data = make_problem(name, "ce")
    V = torch.randn(0, 0)  # set below, once P is known
    results = {}
    for chunk_size in CHUNKS:
        op = build(kind, model, loss_fn, data, chunk_size=chunk_size)
        if V.numel() == 0:
            gen = torch.Generator().manual_seed(0)
            V = torch.randn(op.shape[0], K, generator=gen, dtype=torch.float64)
            expected = dense_truth(kind, op, model, loss_fn, data) @ V
        widths = spy_widths(op, kind)
        results[chunk_size] = op.torch_matmat(V)
        cap = chunk_size or K
        assert widths == [cap] * (K // cap) + ([K % cap] if K % cap else [])
        np.testing.assert_allclose(op.matmat(V.numpy()), results[chunk_size].numpy(), rtol=1e-12)
    for result in results.values():
        scale = float(expected.abs().max())
        torch.testing.assert_close(result, expected, rtol=1e-9, atol=1e-10 * scale)
        torch.testing.assert_close(result, results[None], rtol=1e-9, atol=1e-10 * scale)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_chunked_inverse(kind):
    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    plain = build(kind, model, loss_fn, data)
    chunked = build(kind, model, loss_fn, data, chunk_size=2)
    V = torch.randn(plain.shape[0], 5, generator=torch.Generator().manual_seed(1)).double()
    widths = spy_widths(chunked, kind)
    X = chunked.inverse(0.3).torch_matmat(V)
    assert widths == [2, 2, 1]
    torch.testing.assert_close(X, plain.inverse(0.3).torch_matmat(V), rtol=1e-10, atol=1e-12)
    K_dense = (kfac_dense if kind == "kfac" else ekfac_dense)(plain)
    residual = (K_dense + 0.3 * torch.eye(plain.shape[0], dtype=torch.float64)) @ X - V
    assert float(residual.abs().max()) < 1e-10 * float(V.abs().max())


def test_to_dense_honours_chunk_size():
    model, loss_fn, data = make_problem("mlp_tanh", "mse")
    op = curvops.GGNOperator(model, loss_fn, data, chunk_size=8)
    widths = spy_widths(op, "ggn")
    D = op.to_dense()
    assert max(widths) == 8 and len(widths) == math.ceil(op.shape[0] / 8)
    torch.testing.assert_close(D, dense_ggn(model, loss_fn, data), rtol=1e-9, atol=1e-12)
