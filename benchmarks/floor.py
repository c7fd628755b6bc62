"""The raw-torch floor: a full-data gradient, a hand-written HVP, and float64 references."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import functional_call, jvp, vjp

from benchmarks.problems import Problem

MatVec = Callable[[torch.Tensor], torch.Tensor]


def gradient(problem: Problem) -> Callable[[], None]:
    """One full-data gradient: ``loss.backward()`` per batch, weighted B / N."""
    model, loss_fn, N = problem.model, problem.loss_fn, problem.num_data

    def run() -> None:
        model.zero_grad(set_to_none=True)
        for X, y in problem.data:
            (loss_fn(model(X), y) * (len(y) / N)).backward()

    return run


def double_backward_hvp(problem: Problem) -> MatVec:
    """Hand-written HVP: per batch, grad with create_graph, then grad of <g, v>."""
    model, loss_fn, N = problem.model, problem.loss_fn, problem.num_data
    params = list(model.parameters())

    def mv(v: torch.Tensor) -> torch.Tensor:
        vs = _split(v, params)
        out = torch.zeros_like(v)
        for X, y in problem.data:
            loss = loss_fn(model(X), y) * (len(y) / N)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            hv = torch.autograd.grad(grads, params, vs)
            out += torch.cat([h.reshape(-1) for h in hv])
        return out

    return mv


def ggn_reference(problem: Problem) -> MatVec:
    """J^T (d²L/df²) J v per batch with torch.func (the output Hessian by double backward)."""
    model, loss_fn, N = problem.model, problem.loss_fn, problem.num_data
    params = dict(model.named_parameters())
    names = list(params)

    def mv(v: torch.Tensor) -> torch.Tensor:
        vs = dict(zip(names, _split(v, list(params.values()))))
        out = torch.zeros_like(v)
        for X, y in problem.data:

            def f(p, X=X):
                return functional_call(model, p, (X,))

            out_f, Jv = jvp(f, (params,), (vs,))
            leaf = out_f.detach().requires_grad_(True)
            with torch.enable_grad():
                g = torch.autograd.grad(loss_fn(leaf, y), leaf, create_graph=True)[0]
                HJv = torch.autograd.grad(g, leaf, Jv)[0]
            (res,) = vjp(f, params)[1](HJv * (len(y) / N))
            out += torch.cat([res[n].reshape(-1) for n in names])
        return out

    return mv


def _split(v: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    sizes = [p.numel() for p in params]
    return [c.view_as(p) for c, p in zip(torch.split(v, sizes), params)]
