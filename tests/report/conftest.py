"""A small float64 problem for the report and landscape tests: a tanh MLP (P = 83, the first
layer's block above the dense size of block_top_eigenvalues), three batches of unequal size,
mean cross-entropy; and a module-wide report of it."""

import pytest
import torch
from torch import nn

import curvops

SIZES = (7, 5, 4)  # N = 16
K, BOTTOM, N_PROBES, DENSITY_PROBES, STEPS = 5, 3, 30, 6, 40


def make_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    gen = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(n, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=gen),
        )
        for n in SIZES
    ]
    return model, nn.CrossEntropyLoss(), data


def analyze(model, loss_fn, data, **kw):
    opts = dict(
        k=K, bottom=BOTTOM, n_probes=N_PROBES, density_probes=DENSITY_PROBES, lanczos_steps=STEPS
    )
    return curvops.analyze(model, loss_fn, data, **{**opts, **kw})


@pytest.fixture(scope="module")
def problem():
    return make_problem()


@pytest.fixture(scope="module")
def report(problem):
    return analyze(*problem, compare=["kfac", "ekfac"])
