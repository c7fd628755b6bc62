"""Why the Hessian oracle uses ``torch.autograd.functional.hessian``: in torch 2.13,
``torch.func.hessian`` (and ``jacrev(jacrev)``) is wrong through an affine LayerNorm.

Measured here (float64, Linear -> affine LayerNorm -> tanh -> Linear, MSE, inputs
(N, S, D) = (2, 5, 3)): autograd's double backward agrees with central finite differences
of the gradient to 2e-10, torch.func.hessian is 9.4 % off (the issue said "about 6 %" on
another model). Without the LayerNorm's affine parameters all three agree (control).
"""

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian as autograd_hessian
from torch.func import functional_call, jacrev
from torch.func import hessian as func_hessian


def _problem(affine: bool):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4, elementwise_affine=affine), nn.Tanh(), nn.Linear(4, 2)
    ).double()
    if affine:
        with torch.no_grad():
            model[1].weight.normal_()
            model[1].bias.normal_()
    X = torch.randn(2, 5, 3, dtype=torch.float64)
    y = torch.randn(2, 5, 2, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def loss(flat):
        chunks = torch.split(flat, sizes)
        ps = {n: c.view(p.shape) for n, c, p in zip(names, chunks, params)}
        return nn.functional.mse_loss(functional_call(model, ps, (X,)), y)

    return loss, torch.cat([p.reshape(-1) for p in params])


def _finite_differences(loss, w0, eps=1e-5):
    def grad(w):
        w = w.clone().requires_grad_(True)
        return torch.autograd.grad(loss(w), w)[0]

    eye = torch.eye(w0.numel(), dtype=w0.dtype)
    return torch.stack([(grad(w0 + eps * e) - grad(w0 - eps * e)) / (2 * eps) for e in eye], 1)


def _rel(A, B):
    return float((A - B).norm() / B.norm())


@pytest.mark.parametrize("affine", [True, False])
def test_func_hessian_vs_autograd_hessian_vs_finite_differences(affine):
    loss, w0 = _problem(affine)
    fd = _finite_differences(loss, w0)
    assert _rel(autograd_hessian(loss, w0), fd) < 1e-7
    off = [_rel(func_hessian(loss)(w0), fd), _rel(jacrev(jacrev(loss))(w0), fd)]
    if affine:
        assert all(0.05 < e < 0.15 for e in off), off  # measured: 0.094 for both
    else:
        assert all(e < 1e-7 for e in off), off
