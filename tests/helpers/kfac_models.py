"""Shared helpers of the KFAC / EKFAC tests: small float64 problems and dense ground truth."""

from __future__ import annotations

import torch
from oracles import dense_ggn
from torch import nn


def layer_blocks(model: nn.Module, separate: bool = True) -> list[list[torch.Tensor]]:
    """KFAC's blocks: per Linear / Conv2d [weight], [bias] (separate) or [weight, bias]."""
    blocks = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            ps = [p for p in (module.weight, module.bias) if p is not None]
            blocks.extend([[p] for p in ps] if separate else [ps])
    return blocks


def block_diagonal(M: torch.Tensor, blocks) -> torch.Tensor:
    """M with every entry outside the diagonal blocks set to zero."""
    out = torch.zeros_like(M)
    start = 0
    for b in blocks:
        n = sum(p.numel() for p in b)
        out[start : start + n, start : start + n] = M[start : start + n, start : start + n]
        start += n
    return out


def dense_block_ggn(model, loss_fn, data, separate: bool = True) -> torch.Tensor:
    """The block-diagonal GGN (KFAC's blocks), from torch.func ground truth, in block order."""
    blocks = layer_blocks(model, separate)
    params = [p for b in blocks for p in b]
    return block_diagonal(dense_ggn(model, loss_fn, data, params), blocks)


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    return float((A - B).norm() / B.norm())


def reference_net():
    """DESIGN §4: W = [[2,3],[4,1]], v = [2,1], x = [1,1], y = 14, MSE, no biases."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 3.0], [4.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[2.0, 1.0]]))
    data = [(torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([[14.0]]).double())]
    return model, nn.MSELoss(), data


class SeqNet(nn.Module):
    """Linear layers over a token axis (B, S, 3) -> (B, S, 2), tokens never mix."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, X):
        return self.head(torch.tanh(self.embed(X)))


class MixNet(nn.Module):
    """Tokens mix after the first layer (a mean over the sequence), output (B, S, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, X):
        h = torch.tanh(self.embed(X))
        return self.head(h + h.mean(dim=1, keepdim=True))


def make(name: str, loss: str = "ce", reduction: str = "mean", sizes=(5, 3, 2), seed: int = 0):
    """(model, loss_fn, data) in float64 with unequal batches."""
    torch.manual_seed(seed)
    if name == "mlp":
        model, shape = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), (4,)
    elif name == "linear":
        model, shape = nn.Sequential(nn.Linear(4, 3)), (4,)
    elif name == "deep_linear":
        model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 4), nn.Linear(4, 3))
        shape = (4,)
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(3, 2, 2, stride=2),
            nn.Flatten(),
            nn.Linear(8, 3),
        )
        shape = (2, 4, 4)
    elif name == "cnn_pad":  # reflect padding, "same", dilation, rectangular kernel
        model = nn.Sequential(
            nn.Conv2d(2, 3, (3, 2), padding="same", padding_mode="reflect", dilation=(1, 2)),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(48, 3),
        )
        shape = (2, 4, 4)
    elif name == "seq":
        model, shape = SeqNet(), (4, 3)
    elif name == "mix":
        model, shape = MixNet(), (4, 3)
    else:
        raise KeyError(name)
    model = model.double()
    gen = torch.Generator().manual_seed(seed + 1)
    loss_fn = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}[loss]
    data = []
    for B in sizes:
        X = torch.randn(B, *shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            f = model(X)
        if loss == "ce":
            f = f.transpose(1, 2) if f.ndim == 3 else f
            y = torch.randint(0, f.shape[1], (f.shape[0], *f.shape[2:]), generator=gen)
        elif loss == "bce":
            y = torch.randint(0, 2, f.shape, generator=gen).double()
        else:
            y = torch.randn(f.shape, generator=gen, dtype=torch.float64)
        data.append((X, y))
    if loss == "ce" and name in ("seq", "mix"):
        model = _ClassesFirst(model)
    return model, loss_fn(reduction=reduction), data


class _ClassesFirst(nn.Module):
    """(B, S, C) -> (B, C, S) for CrossEntropyLoss on sequence outputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, X):
        return self.inner(X).transpose(1, 2)
