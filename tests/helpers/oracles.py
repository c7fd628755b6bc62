"""Dense float64 ground truth, built independently of curvops.

Every matrix is that of the loss over the WHOLE data set in one batch, with the loss's
own reduction (so the batch weighting of the operators is tested, not assumed).
Second derivatives by autograd double backward (``torch.autograd.functional.hessian``):
``torch.func.hessian`` is about 6 % off through an affine LayerNorm on (N, S, D) inputs in
torch 2.13 (pinned by ``test_oracles.py``). First derivatives (``jacrev``) by torch.func.
"""

from __future__ import annotations

import torch
from torch.autograd.functional import hessian
from torch.func import functional_call, jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel


def concat_data(data):
    """All batches of ``data`` as one batch (tensors or dicts of tensors)."""
    Xs, ys = zip(*data)
    if isinstance(Xs[0], dict):
        X = {k: torch.cat([x[k] for x in Xs]) for k in Xs[0]}
    else:
        X = torch.cat(Xs)
    return X, torch.cat(ys)


def _flat_fn(model, params):
    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def call(flat, X):
        chunks = torch.split(flat, sizes)
        ps = {k: c.view(s) for k, c, s in zip(keys, chunks, shapes)}
        return functional_call(model, ps, (X,))

    flat0 = torch.cat([p.detach().reshape(-1) for p in params])
    return call, flat0


def dense_hessian(model, loss_fn, data, params=None):
    params = list(params or [p for p in model.parameters() if p.requires_grad])
    call, flat0 = _flat_fn(model, params)
    X, y = concat_data(data)
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no 2nd derivative
        return hessian(lambda w: loss_fn(call(w, X), y), flat0)


def dense_ggn(model, loss_fn, data, params=None):
    """Jᵀ (∇²_f L) J with J = ∂f/∂θ over the whole data set."""
    params = list(params or [p for p in model.parameters() if p.requires_grad])
    call, flat0 = _flat_fn(model, params)
    X, y = concat_data(data)
    out = call(flat0, X).detach()
    J = jacrev(lambda w: call(w, X))(flat0).reshape(out.numel(), -1)
    Hf = hessian(lambda f: loss_fn(f, y), out).reshape(out.numel(), out.numel())
    return J.T @ Hf @ J


def dense_empirical_fisher(model, loss_fn, data, params=None):
    """c Σ_n g_n g_nᵀ, g_n the gradient of data point n's summed loss; c = L_mean / L_sum."""
    params = list(params or [p for p in model.parameters() if p.requires_grad])
    call, flat0 = _flat_fn(model, params)
    X, y = concat_data(data)
    summed = type(loss_fn)(reduction="sum")
    N = y.shape[0]
    grads = []
    for n in range(N):
        Xn = {k: v[n : n + 1] for k, v in X.items()} if isinstance(X, dict) else X[n : n + 1]
        grads.append(
            torch.func.grad(lambda w, Xn=Xn, n=n: summed(call(w, Xn), y[n : n + 1]))(flat0)
        )
    G = torch.stack(grads)
    c = 1.0
    if loss_fn.reduction == "mean":
        out = call(flat0, X)
        c = float(loss_fn(out, y) / summed(out, y))
    return c * G.T @ G


def dense_gradient(model, loss_fn, data, params=None):
    """∇_θ loss_fn(f(X), y) over the whole data set in one batch."""
    params = list(params or [p for p in model.parameters() if p.requires_grad])
    call, flat0 = _flat_fn(model, params)
    X, y = concat_data(data)
    return torch.func.grad(lambda w: loss_fn(call(w, X), y))(flat0)


def dense_point_outer_products(model, point_loss, data, c, params=None):
    """c Σ_n g_n g_nᵀ over every data point n, g_n = ∇_θ point_loss(f(x_n), y_n)."""
    params = list(params or [p for p in model.parameters() if p.requires_grad])
    call, flat0 = _flat_fn(model, params)
    grads = []
    for X, y in data:
        for n in range(y.shape[0]):
            Xn, yn = X[n : n + 1], y[n : n + 1]
            grads.append(
                torch.func.grad(lambda w, Xn=Xn, yn=yn: point_loss(call(w, Xn), yn))(flat0)
            )
    G = torch.stack(grads)
    return c * G.T @ G
