"""The demo job: train on digits, analyse the curvature, write results.json and figures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla
import torch
from torch import nn

from curvops.demo import accuracy, load_digits_data, make_mlp, train
from curvops.operators import HessianOperator


def run_demo(out: str | Path, device: str | None = None, k: int = 10) -> dict:
    """Train an MLP on digits, print and save its top-k Hessian eigenvalues."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits_data(device=device)
    model = make_mlp().to(device)
    t0 = time.perf_counter()
    history = train(model, data)
    print(
        f"trained MLP in {time.perf_counter() - t0:.1f} s: final loss {history[-1]:.4f}, "
        f"test accuracy {accuracy(model, data.test):.3f}"
    )
    op = HessianOperator(model, nn.CrossEntropyLoss(), data.train)
    t0 = time.perf_counter()
    vals = np.sort(sla.eigsh(op, k=k, which="LA", return_eigenvectors=False))[::-1]
    print(f"top-{k} Hessian eigenvalues ({time.perf_counter() - t0:.1f} s):")
    print("  " + "  ".join(f"{v:.4g}" for v in vals))
    results = {"mlp": {"num_params": op.shape[0], "top_eigenvalues": vals.tolist()}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")
    return results
