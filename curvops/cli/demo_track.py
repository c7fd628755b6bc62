"""The demo's tracked run: full-batch gradient descent on digits, up to the edge of stability.

The digits MLP from scratch, mean-squared error on one-hot targets, full-batch GD at step
size η; a ``CurvatureTracker`` on the whole training set measures the top-k Hessian
eigenvalues (warm-started) and the per-layer scores every ``every`` steps. The sharpness
λ_max rises to 2/η and hovers there (Cohen et al., 2021). Writes track.jsonl (one
``CurvatureRecord`` per measurement) and track.png (the tracker's figure); 17 measurements,
about 600 Hessian-vector products, 5-10 s on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import curvops
from curvops.cli.digits import load_digits_data, make_mlp
from curvops.track import CurvatureTracker


def tracked_run(
    out: Path,
    steps: int = 400,
    every: int = 25,
    lr: float = 1.0,
    k: int = 3,
    hidden: int = 32,
    num_train: int = 1400,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[dict[str, Any], CurvatureTracker]:
    """``steps`` full-batch GD steps (η = ``lr``), measured at step 0 and every ``every``
    steps; writes ``out``/track.jsonl and track.png. Returns (the summary, the tracker)."""
    start = time.perf_counter()
    data = load_digits_data(num_train=num_train, batch_size=num_train, device=device)
    X, y = data.train[0]
    probe = [(X, nn.functional.one_hot(y, 10).to(X.dtype))]  # (N, 64), (N, 10)
    torch.manual_seed(seed)
    model, loss_fn = make_mlp(hidden).to(device), nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = CurvatureTracker(
        model, loss_fn, probe, every, k, layers=True, optimizer=optimizer, seed=seed,
        log=out / "track.jsonl",
    )  # fmt: skip
    tracker.measure()  # step 0
    losses = _descend(model, loss_fn, probe[0], optimizer, tracker, steps)
    tracker.plot(out / "track.png")
    summary = _summary(tracker, losses, lr, time.perf_counter() - start)
    return summary, tracker


def _descend(model, loss_fn, batch, optimizer, tracker: CurvatureTracker, steps: int):
    """``steps`` full-batch GD steps, the tracker stepped after each; the losses (steps,)."""
    X, Y = batch
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(X), Y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        tracker.step()
    return losses


def _summary(tracker: CurvatureTracker, losses, lr: float, seconds: float) -> dict[str, Any]:
    """The numbers for results.json, with a cold solve at the final parameters beside the
    last warm one (same k and tol): its eigenvalues and products."""
    records = tracker.records
    sharp = np.array([r.sharpness for r in records])
    cold = curvops.eigsh(tracker.operator, k=tracker.k, tol=tracker.tol, seed=tracker.seed)
    warm = [r.matvecs["eigsh"] for r in records if r.warm]  # the first solve is cold
    return {
        "steps": tracker.count,
        "every": tracker.every,
        "measurements": len(records),
        "lr": lr,
        "two_over_lr": 2.0 / lr,
        "sharpness_first": float(sharp[0]),
        "sharpness_max": float(sharp.max()),
        "sharpness_last": float(sharp[-1]),
        "eigenvalues_last": records[-1].eigenvalues,
        "eigenvalues_last_cold": cold.eigenvalues.tolist(),
        "products_warm_mean": float(np.mean(warm)) if warm else None,
        "products_last": records[-1].matvecs["eigsh"],
        "products_cold_last": int(cold.n_matvecs),
        "products_total": int(sum(r.n_matvecs for r in records)),
        "seconds_measuring": float(sum(r.seconds for r in records)),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "seconds": seconds,
    }


def describe(summary: dict[str, Any]) -> str:
    """One line: λ_max at the start, its maximum and at the end against 2/η; the products."""
    s = summary
    return (
        f"full-batch GD, η = {s['lr']:g}, {s['steps']} steps: λ_max {s['sharpness_first']:.3f} "
        f"-> {s['sharpness_last']:.3f} (max {s['sharpness_max']:.3f}), 2/η = "
        f"{s['two_over_lr']:.3f}; {s['measurements']} measurements; last top-"
        f"{len(s['eigenvalues_last'])} solve {s['products_last']} products "
        f"({'warm' if s['measurements'] > 1 else 'cold'}), a cold one "
        f"{s['products_cold_last']}; {s['seconds']:.1f} s"
    )
