"""Small test models and data sets (float64), each with unequal batch sizes."""

from __future__ import annotations

import torch
from torch import nn

import curvops

BATCH_SIZES = (5, 3, 2)  # unequal on purpose: N = 10


class DictInputNet(nn.Module):
    """Takes {"a": (B, 3), "b": (B, 2)}."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.fa = nn.Linear(3, 4)
        self.fb = nn.Linear(2, 4)
        self.head = nn.Linear(4, out)

    def forward(self, X):
        return self.head(torch.tanh(self.fa(X["a"]) + self.fb(X["b"])))


class SequenceNet(nn.Module):
    """Linear layers over a token axis: (B, S, 3) -> (B, C, S) (classes on axis 1)."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.head = nn.Linear(5, out)

    def forward(self, X):
        return self.head(torch.tanh(self.embed(X))).transpose(1, 2)


def make_model(name: str, out: int) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp_tanh":
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out))
    elif name == "mlp_relu_nobias":
        model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, out, bias=False))
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2, 2, 2),
            nn.Flatten(),
            nn.Linear(2 * 2 * 2, out),
        )
    elif name == "batchnorm_eval":
        model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, out))
        with torch.no_grad():
            model[1].running_mean.uniform_(-1, 1)
            model[1].running_var.uniform_(0.5, 2)
            model[1].weight.uniform_(0.5, 1.5)
        model.eval()
    elif name == "dict_input":
        model = DictInputNet(out)
    elif name == "sequence":
        model = SequenceNet(out)
    else:
        raise KeyError(name)
    return model.double()


MODELS = ["mlp_tanh", "mlp_relu_nobias", "cnn", "batchnorm_eval", "dict_input", "sequence"]


def make_inputs(name: str, n: int, gen: torch.Generator):
    if name == "cnn":
        return torch.randn(n, 1, 6, 6, generator=gen, dtype=torch.float64)
    if name == "dict_input":
        return {
            "a": torch.randn(n, 3, generator=gen, dtype=torch.float64),
            "b": torch.randn(n, 2, generator=gen, dtype=torch.float64),
        }
    if name == "sequence":
        return torch.randn(n, 4, 3, generator=gen, dtype=torch.float64)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64)


def make_targets(loss: str, output: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if loss == "ce":
        shape = (output.shape[0], *output.shape[2:])
        return torch.randint(0, output.shape[1], shape, generator=gen)
    if loss == "bce":
        return torch.randint(0, 2, output.shape, generator=gen).double()
    return torch.randn(output.shape, generator=gen, dtype=torch.float64)


def make_loss(loss: str, reduction: str) -> nn.Module:
    return {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}[loss](
        reduction=reduction
    )


def make_problem(name: str, loss: str, reduction: str = "mean", sizes=BATCH_SIZES, device="cpu"):
    """(model, loss_fn, data) with batches of the given sizes, on ``device``."""
    out = 3
    model = make_model(name, out).to(device)
    gen = torch.Generator().manual_seed(1)
    data = []
    for B in sizes:
        X = make_inputs(name, B, gen)
        with torch.no_grad():
            f = model(_to(X, device))
        y = make_targets(loss, f.cpu(), gen)
        data.append((_to(X, device), y.to(device)))
    return model, make_loss(loss, reduction), data


def batch_size_fn(name: str):
    return (lambda X: X["a"].shape[0]) if name == "dict_input" else None


def _to(X, device):
    if isinstance(X, dict):
        return {k: v.to(device) for k, v in X.items()}
    return X.to(device)


def build_operator(kind: str, model, loss_fn, data, **kw):
    """A curvops operator by name: hessian, hessian_blocks, ggn, mc, empirical, kfac, ekfac."""
    if kind.startswith("hessian"):
        blocks = "layer" if kind == "hessian_blocks" else None
        return curvops.HessianOperator(model, loss_fn, data, blocks=blocks, **kw)
    if kind == "kfac":
        return curvops.KFACOperator(model, loss_fn, data, **kw)
    if kind == "ekfac":
        return curvops.EKFACOperator(model, loss_fn, data, **kw)
    mode = {"ggn": "exact"}.get(kind, kind)
    return curvops.GGNOperator(model, loss_fn, data, mode=mode, **kw)
