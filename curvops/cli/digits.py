"""The built-in demo problem: small networks trained on scikit-learn's bundled digits.

No download: ``sklearn.datasets.load_digits`` ships with scikit-learn (1,797 images 8x8).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DigitsData:
    """Train/test batches of digits: X (B, 64) or (B, 1, 8, 8) scaled to [0, 1], y (B,)."""

    train: list[tuple[torch.Tensor, torch.Tensor]]
    test: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_train(self) -> int:
        return sum(len(y) for _, y in self.train)


def load_digits_data(
    images: bool = False,
    batch_size: int = 256,
    num_train: int = 1400,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> DigitsData:
    """Split digits into train / test batches (the last train batch is smaller)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - dev extra
        raise ImportError("the demo needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    X = torch.tensor(digits.data, dtype=dtype) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm].to(device), y[perm].to(device)
    if images:
        X = X.reshape(-1, 1, 8, 8)

    def split(X, y):
        return [
            (X[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)
        ]

    return DigitsData(split(X[:num_train], y[:num_train]), split(X[num_train:], y[num_train:]))


def make_mlp(hidden: int = 32) -> nn.Sequential:
    """64 -> hidden -> hidden -> 10 with tanh (P = 3,466 for hidden = 32)."""
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 10),
    )


def make_cnn(channels: int = 6) -> nn.Sequential:
    """Conv(1->c, 3x3) -> ReLU -> MaxPool 2 -> Conv(c->c, 3x3) -> ReLU -> Linear(c*2*2 -> 10)."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * 2 * 2, 10),
    )


def train(
    model: nn.Module, data: DigitsData, epochs: int = 60, lr: float = 1e-2, seed: int = 0
) -> list[float]:
    """Adam on the mean cross-entropy; returns the per-epoch training losses."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for _ in range(epochs):
        total = 0.0
        for X, y in data.train:
            opt.zero_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
        history.append(total / data.num_train)
    return history


@torch.no_grad()
def accuracy(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = sum(int((model(X).argmax(1) == y).sum()) for X, y in batches)
    return correct / sum(len(y) for _, y in batches)


def demo_problem(
    hidden: int = 16, num_train: int = 600, epochs: int = 30, images: bool = False
) -> tuple[nn.Module, nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(model, loss_fn, training batches): an MLP (or with ``images`` the CNN) trained on
    ``num_train`` digits, seeded; for examples and the docs. The training runs once per
    setting; each call gets a fresh copy of the trained model (P = 1,482 by default)."""
    model = make_cnn() if images else make_mlp(hidden)
    model.load_state_dict(_trained(hidden, num_train, epochs, images))
    data = load_digits_data(images=images, num_train=num_train)
    return model, nn.CrossEntropyLoss(), data.train


@functools.cache
def _trained(hidden: int, num_train: int, epochs: int, images: bool) -> dict:
    torch.manual_seed(0)
    model = make_cnn() if images else make_mlp(hidden)
    train(model, load_digits_data(images=images, num_train=num_train), epochs=epochs)
    return {k: v.clone() for k, v in model.state_dict().items()}
