"""Short training runs with a tracker, for tests/track and tests/integrations."""

from __future__ import annotations

import torch
from models import make_problem


def full_batch_loss(model, loss_fn, data) -> torch.Tensor:
    """The whole-data mean loss: batch losses weighted by B / N (the operators' weighting)."""
    n = sum(len(y) for _, y in data)
    return sum(loss_fn(model(X), y) * (len(y) / n) for X, y in data)


def sgd_run(trackers, steps: int = 30, lr: float = 0.5, name: str = "mlp_tanh", loss="ce"):
    """``steps`` full-batch SGD steps on a small float64 problem, each tracker stepped after
    each; ``trackers(model, loss_fn, data, optimizer)`` builds them. Returns (model, loss_fn,
    data, trackers, the dense-truth hook results)."""
    model, loss_fn, data = make_problem(name, loss)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    built = trackers(model, loss_fn, data, opt)
    snapshots = []
    for _ in range(steps):
        opt.zero_grad()
        full_batch_loss(model, loss_fn, data).backward()
        opt.step()
        records = [t.step() for t in built]
        if any(r is not None for r in records):
            snapshots.append(([p.detach().clone() for p in model.parameters()], records))
    return model, loss_fn, data, built, snapshots
