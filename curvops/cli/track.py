"""The ``track`` job: train with the factory's optimizer and track the curvature."""

from __future__ import annotations

import itertools

import torch

from curvops.cli.prepare import prepare
from curvops.core.outputs import call_model, logits_of
from curvops.track import CurvatureTracker


def run_track(args) -> dict:
    """``args.steps`` optimizer steps over the factory's batches (cycled), a measurement at
    step 0 and every ``args.every`` steps; writes records.jsonl and tracking.png to --out."""
    if args.every > args.steps:
        raise ValueError(
            f"--every {args.every} is larger than --steps {args.steps}: no measurement "
            "would fall inside the run"
        )
    job = prepare(args, "track")
    model, out = job.model, job.out
    optimizer = _optimizer(job.optimizer, model, args.lr, args.factory)
    tracker = CurvatureTracker(
        model, job.loss_fn, job.data, args.every, args.k,
        curvature=args.curvature, which=args.which, tol=args.tol, trace=args.trace,
        layers=args.layers, optimizer=optimizer, log=out / "records.jsonl",
        **job.operator_kwargs,
    )  # fmt: skip
    _print(tracker.measure())
    _train(model, job.loss_fn, job.data, optimizer, tracker, args.steps)
    tracker.plot(out / "tracking.png")
    print(f"wrote {out / 'records.jsonl'} ({len(tracker.records)} records), {out / 'tracking.png'}")
    return {"records": [r.to_dict() for r in tracker.records]}


def _optimizer(optimizer, model, lr: float | None, spec: str):
    if optimizer is not None:
        if lr is not None:
            raise ValueError(f"{spec} returns an optimizer; --lr is for factories without one")
        return optimizer
    if lr is None:
        raise ValueError(
            f"{spec} returns no optimizer: pass --lr to train with SGD, or return "
            "(model, loss_fn, data, optimizer)"
        )
    return torch.optim.SGD(model.parameters(), lr=lr)


def _train(model, loss_fn, data, optimizer, tracker: CurvatureTracker, steps: int) -> None:
    """``steps`` optimizer steps, one batch each, cycling over the data."""
    device = next(model.parameters()).device
    batches = itertools.cycle(data) if isinstance(data, (list, tuple)) else _epochs(data)
    for X, y in itertools.islice(batches, steps):
        optimizer.zero_grad()
        output = logits_of(call_model(model, _to(X, device)))  # as the operators call it
        loss_fn(output, _to(y, device)).backward()
        optimizer.step()
        record = tracker.step()
        if record is not None:
            _print(record)


def _epochs(data):
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("the factory's data has no batches")


def _to(x, device):
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _print(record) -> None:
    top = "  ".join(f"{v:.4g}" for v in record.eigenvalues[:5])
    extra = f", 2/η {record.two_over_lr:.4g}" if record.two_over_lr is not None else ""
    print(
        f"step {record.step}: λ {top}{extra} ({record.n_matvecs} products, {record.seconds:.2f} s)"
    )
