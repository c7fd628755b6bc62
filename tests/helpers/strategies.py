"""Hypothesis strategies: small random models, losses, reductions and batch splits."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "gelu": nn.GELU}


@st.composite
def problems(draw, losses=("mse", "ce", "bce"), conv=True):
    """(model, loss_fn, batches, description) with P small enough for dense checks."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    use_conv = conv and draw(st.booleans())
    bias = draw(st.booleans())
    act = ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]
    widths = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    out = draw(st.integers(1, 3))
    loss = draw(st.sampled_from(losses))
    out = max(out, 2) if loss == "ce" else out
    reduction = draw(st.sampled_from(["mean", "sum"]))
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    layers: list[nn.Module] = []
    if use_conv:
        layers += [nn.Conv2d(1, 2, 2, bias=bias), act(), nn.Flatten()]
        width = 2 * 2 * 2  # 3x3 input, 2x2 kernel -> 2x2 maps
    else:
        width = 3
    for w in widths:
        layers += [nn.Linear(width, w, bias=bias), act()]
        width = w
    layers.append(nn.Linear(width, out, bias=bias))
    model = nn.Sequential(*layers).double()
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for B in sizes:
        shape = (B, 1, 3, 3) if use_conv else (B, 3)
        X = torch.randn(shape, generator=gen, dtype=torch.float64)
        if loss == "ce":
            y = torch.randint(0, out, (B,), generator=gen)
        elif loss == "bce":
            y = torch.randint(0, 2, (B, out), generator=gen).double()
        else:
            y = torch.randn(B, out, generator=gen, dtype=torch.float64)
        batches.append((X, y))
    loss_fn = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}[loss](
        reduction=reduction
    )
    return model, loss_fn, batches


def resplit(batches, sizes):
    """The same data points, cut into batches of other sizes."""
    X = torch.cat([X for X, _ in batches])
    y = torch.cat([y for _, y in batches])
    out, start = [], 0
    for B in sizes:
        out.append((X[start : start + B], y[start : start + B]))
        start += B
    return out
