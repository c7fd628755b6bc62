"""The seeded reference problems of the benchmark (all cross-entropy, reduction "mean")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Problem:
    """A model, its loss and its data as equal-sized batches, on one device."""

    name: str
    model: nn.Module
    loss_fn: nn.Module
    data: Batches

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def num_data(self) -> int:
        return sum(len(y) for _, y in self.data)

    def copy(self) -> Problem:
        """The same problem with its own copy of the model (for tools that attach hooks)."""
        return Problem(self.name, _copy_module(self.model), self.loss_fn, self.data)

    def to(self, device: str, dtype: torch.dtype = torch.float32) -> Problem:
        """A copy on ``device`` in ``dtype`` (targets keep their integer type)."""
        model = _copy_module(self.model).to(device=device, dtype=dtype)
        data = [(X.to(device=device, dtype=dtype), y.to(device)) for X, y in self.data]
        return Problem(self.name, model, self.loss_fn, data)


class TinyMixer(nn.Module):
    """Transformer-like, attention-free: Linear layers over a token axis (B, S, D_in) -> (B, C).

    Token mixing is a Linear over the sequence axis, channel mixing a two-layer MLP, with
    residuals and LayerNorm; the head averages the tokens.
    """

    def __init__(self, seq: int = 16, d_in: int = 32, dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.tokens = nn.Linear(seq, seq)
        self.norm2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = self.embed(X)
        h = h + self.tokens(self.norm1(h).transpose(1, 2)).transpose(1, 2)
        h = h + self.down(torch.tanh(self.up(self.norm2(h))))
        return self.head(h.mean(dim=1))


def mlp(quick: bool = False) -> Problem:
    """784-512-256-10 ReLU MLP, 2,048 random samples in batches of 512 (P = 535,818)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    gen = torch.Generator().manual_seed(1)
    n = 1024 if quick else 2048
    X = torch.randn(n, 784, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Problem("mlp", model, nn.CrossEntropyLoss(), _split(X, y, 512))


def transformer(quick: bool = False) -> Problem:
    """TinyMixer on 1,024 random sequences of 16 tokens (P = 19,866), batches of 256."""
    torch.manual_seed(0)
    model = TinyMixer()
    gen = torch.Generator().manual_seed(2)
    n = 512 if quick else 1024
    X = torch.randn(n, 16, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Problem("transformer", model, nn.CrossEntropyLoss(), _split(X, y, 256))


def digits(quick: bool = False) -> Problem:
    """64-128-64-10 tanh MLP (P = 17,226) trained 200 full-batch Adam steps on sklearn digits."""
    return _trained_digits_mlp("digits", (128, 64), steps=50 if quick else 200)


def digits_small(quick: bool = False) -> Problem:
    """64-32-16-10 tanh MLP (P = 2,778) trained 200 full-batch Adam steps on sklearn digits:
    small enough for dense curvature blocks (the KFAC / EKFAC Frobenius errors)."""
    return _trained_digits_mlp("digits_small", (32, 16), steps=200)


def _trained_digits_mlp(name: str, hidden: tuple[int, int], steps: int) -> Problem:
    """64-h1-h2-10 tanh MLP, ``steps`` full-batch Adam steps on 1,792 digits, batches of 448."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    raw = load_digits()
    X = torch.tensor(raw.data, dtype=torch.float32)[:1792] / 16.0
    y = torch.tensor(raw.target, dtype=torch.long)[:1792]
    h1, h2 = hidden
    model = nn.Sequential(
        nn.Linear(64, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(), nn.Linear(h2, 10)
    )
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()
    return Problem(name, model, loss_fn, _split(X, y, 448))


def cnn(quick: bool = False) -> Problem:
    """Two conv layers + linear head on 512 random 3x32x32 images (P = 25,578), batches of 128."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )
    gen = torch.Generator().manual_seed(3)
    n = 256 if quick else 512
    X = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Problem("cnn", model, nn.CrossEntropyLoss(), _split(X, y, 128))


PROBLEMS = {"mlp": mlp, "transformer": transformer, "digits": digits, "cnn": cnn}


def _split(X: torch.Tensor, y: torch.Tensor, size: int) -> Batches:
    return [(X[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def _copy_module(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
