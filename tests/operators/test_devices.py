"""Every public path on the model's device: CPU here, CUDA where present (issue 14, item 5).

Each test takes the ``device`` fixture, so the CPU items prove the test code and the CUDA
items (marker ``cuda``) run the same checks on a GPU. Truth is dense float64, computed on
the CPU (it does not depend on the device); approximations (KFAC, EKFAC, the MC Fisher)
and the stochastic estimators are compared with the same call on the CPU. ``HostTransfers``
records every tensor that leaves the device for the host (``copies``: more than ``SMALL``
entries, a vector; ``small``: a handful of numbers), and every scalar read (``.item()``,
``float(t)``, ``bool(t)``): each is a sync on a GPU.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from models import make_problem
from oracles import dense_empirical_fisher, dense_ggn, dense_gradient, dense_hessian
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader, TensorDataset

import curvops

PROBLEMS = [("mlp_tanh", "ce"), ("cnn", "mse")]
EXACT = ["hessian", "ggn", "empirical"]
RTOL64, RTOL32 = 1e-10, 1e-5


SMALL = 64  # a copy of at most this many entries is a read of a few numbers, not a vector


class HostTransfers(TorchDispatchMode):
    """Counts device -> host tensor copies (their sizes in ``copies``, or in ``small`` when
    of at most ``SMALL`` entries) and scalar reads; ``syncs``: the small copies and reads."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[int] = []
        self.small: list[int] = []
        self.scalars = 0

    @property
    def syncs(self) -> int:
        return self.scalars + len(self.small)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.scalars += 1
        elif any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tree_leaves(args)):
            leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            for n in [t.numel() for t in leaves if t.device.type == "cpu"]:
                (self.small if n <= SMALL else self.copies).append(n)
        return out


def build(kind: str, model, loss_fn, data, **kw):
    if kind == "hessian":
        return curvops.HessianOperator(model, loss_fn, data, **kw)
    mode = {"ggn": "exact"}.get(kind, kind)
    return curvops.GGNOperator(model, loss_fn, data, mode=mode, **kw)


DENSE = {"hessian": dense_hessian, "ggn": dense_ggn, "empirical": dense_empirical_fisher}


def moved(problem, device, dtype=torch.float64):
    """(model, loss_fn, data): copies on ``device`` in ``dtype`` (integer targets stay)."""
    model, loss_fn, data = problem

    def to(t):
        return t.to(device, dtype if t.is_floating_point() else t.dtype)

    return copy.deepcopy(model).to(device, dtype), loss_fn, [(to(X), to(y)) for X, y in data]


def rel(a, b) -> float:
    a, b = (torch.as_tensor(x).detach().cpu().double() for x in (a, b))
    return float((a - b).norm() / b.norm())


def probes(P: int, k: int = 4) -> torch.Tensor:
    return torch.randn(P, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def wide_problem():
    """A 6-24-12-3 tanh MLP (P = 507, more than a Lanczos tridiagonal's 21² entries), CE."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 12), nn.Tanh(), nn.Linear(12, 3)
    ).double()
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(24, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=gen)
    return model, nn.CrossEntropyLoss(), [(X[:16], y[:16]), (X[16:], y[16:])]


@pytest.fixture(scope="module")
def wide():
    """The wide problem on the CPU and its dense Hessian (float64)."""
    model, loss_fn, data = wide_problem()
    return model, loss_fn, data, dense_hessian(model, loss_fn, data)


# ------------------------------------------------------------------ exact operators
@pytest.mark.parametrize("kind", EXACT)
@pytest.mark.parametrize("name, loss", PROBLEMS)
def test_exact_products_equal_dense_truth_on_device(device, kind, name, loss):
    model, loss_fn, data = make_problem(name, loss)
    truth = DENSE[kind](model, loss_fn, data)
    op = build(kind, *moved((model, loss_fn, data), device))
    V = probes(op.shape[0])
    assert rel(op @ V[:, 0].numpy(), truth @ V[:, 0]) < RTOL64  # scipy matvec
    assert rel(op.matmat(V.numpy()), truth @ V) < RTOL64
    Vd = V.to(device)
    op.torch_matmat(Vd)  # the first product builds the caches
    with HostTransfers() as seen:
        out = op.torch_matmat(Vd)
    assert out.device.type == device.type and out.dtype == torch.float64
    assert rel(out, truth @ V) < RTOL64
    assert seen.copies == []  # no product crosses to the host


def test_gradient_equals_dense_truth_on_device(device):
    model, loss_fn, data = make_problem("cnn", "ce")
    op = curvops.GGNOperator(*moved((model, loss_fn, data), device))
    g = op.gradient()
    assert g.device.type == device.type
    assert rel(g, dense_gradient(model, loss_fn, data)) < RTOL64


def test_mc_fisher_on_device_equals_cpu(device):
    """The MC labels are keyed by each point's content: the same matrix on every device."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    kw = {"mode": "mc", "mc_samples": 3, "seed": 5}
    cpu = curvops.GGNOperator(model, loss_fn, data, **kw)
    dev_model, _, dev_data = moved((model, loss_fn, data), device)
    op = curvops.GGNOperator(dev_model, loss_fn, dev_data, **kw)
    V = probes(op.shape[0])
    out = op.torch_matmat(V.to(device))
    assert out.device.type == device.type
    assert rel(out, cpu.torch_matmat(V)) < RTOL64


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_float32_products_on_device(device, kind):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    truth = DENSE[kind](model, loss_fn, data)
    op = build(kind, *moved((model, loss_fn, data), device, torch.float32))
    assert op.dtype == np.float32
    V = probes(op.shape[0])
    out = op.torch_matmat(V.float().to(device))
    assert out.device.type == device.type and out.dtype == torch.float32
    assert rel(out, truth @ V) < RTOL32
    assert (op @ V[:, 0].numpy()).dtype == np.float32
    assert rel(op @ V[:, 0].numpy(), truth @ V[:, 0]) < RTOL32
    assert rel(op.matmat(V.numpy()), truth @ V) < RTOL32


def test_dataloader_on_cpu_feeds_a_model_on_device(device):
    """The data loop moves each CPU batch to the model's device."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    X, y = (torch.cat(t) for t in zip(*data))
    loader = DataLoader(TensorDataset(X, y), batch_size=4)  # 4, 4, 2: CPU tensors
    dev_model = copy.deepcopy(model).to(device)
    V = probes(43)
    for kind in ("hessian", "ggn"):
        op = build(kind, dev_model, loss_fn, loader)
        assert op.device.type == device.type
        out = op.torch_matmat(V.to(device))
        assert out.device.type == device.type
        assert rel(out, DENSE[kind](model, loss_fn, data) @ V) < RTOL64
    batches = [(a.to(device), b.to(device)) for a, b in zip(X.split(4), y.split(4))]
    on_list = curvops.KFACOperator(dev_model, loss_fn, batches)
    on_loader = curvops.KFACOperator(dev_model, loss_fn, loader)
    assert rel(on_loader.torch_matmat(V.to(device)), on_list.torch_matmat(V.to(device))) < 1e-12


# ------------------------------------------------------------------ Kronecker factors
@pytest.mark.parametrize("cls", [curvops.KFACOperator, curvops.EKFACOperator])
@pytest.mark.parametrize("name, loss", [("mlp_tanh", "ce"), ("cnn", "ce")])
def test_kronecker_on_device_equals_cpu(device, cls, name, loss):
    model, loss_fn, data = make_problem(name, loss)
    cpu = cls(model, loss_fn, data)
    op = cls(*moved((model, loss_fn, data), device))
    V = probes(op.shape[0])
    Vd = V.to(device)
    op.torch_matmat(Vd)
    with HostTransfers() as seen:
        out = op.torch_matmat(Vd)
    assert out.device.type == device.type and seen.copies == []
    # EKFAC: the factors' eigenvectors come from another eigh on the GPU (1e-8 leaves room
    # for a near-degenerate pair of factor eigenvalues); KFAC is products of sums.
    assert rel(out, cpu.torch_matmat(V)) < (1e-8 if cls is curvops.EKFACOperator else RTOL64)
    assert rel(op @ V[:, 0].numpy(), cpu @ V[:, 0].numpy()) < 1e-8


@pytest.mark.parametrize("cls", [curvops.KFACOperator, curvops.EKFACOperator])
def test_kronecker_float32_on_device(device, cls):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    ref = cls(model, loss_fn, data)  # float64 on the CPU
    op = cls(*moved((model, loss_fn, data), device, torch.float32))
    V = probes(op.shape[0])
    out = op.torch_matmat(V.float().to(device))
    assert out.device.type == device.type and out.dtype == torch.float32
    assert rel(out, ref.torch_matmat(V)) < RTOL32


# ------------------------------------------------------------------ algorithms
def test_eigsh_lanczos_on_device_equals_dense(device, wide):
    model, loss_fn, data, H = wide
    op = curvops.HessianOperator(*moved((model, loss_fn, data), device))
    P = op.shape[0]
    with HostTransfers() as seen:
        res = curvops.eigsh(op, k=3, backend="lanczos", tol=1e-10)
    truth = np.linalg.eigvalsh(H.numpy())[::-1][:3]
    assert res.all_converged
    np.testing.assert_allclose(res.eigenvalues, truth, rtol=1e-9)
    resid = H.numpy() @ res.eigenvectors - res.eigenvectors * res.eigenvalues
    assert np.linalg.norm(resid, axis=0).max() < 1e-8 * abs(truth[0])
    # Products stay on the device: the only vector-sized copy is the returned eigenvectors.
    assert res.n_matvecs > 3 and sum(n >= P for n in seen.copies) <= 1


def test_block_top_eigenvalues_on_device(device, wide):
    model, loss_fn, data, H = wide
    dev_model, _, dev_data = moved((model, loss_fn, data), device)
    op = curvops.HessianOperator(dev_model, loss_fn, dev_data, blocks="layer")
    res = curvops.block_top_eigenvalues(op, tol=1e-10)
    cpu = curvops.block_top_eigenvalues(
        curvops.HessianOperator(model, loss_fn, data, blocks="layer"), tol=1e-10
    )
    truth = [np.linalg.eigvalsh(H[s, s].numpy())[-1] for s in op.block_slices]
    assert res.sizes == [168, 300, 39] and all(res.converged)
    np.testing.assert_allclose(res.eigenvalues, truth, rtol=1e-8)
    np.testing.assert_allclose(res.eigenvalues, cpu.eigenvalues, rtol=1e-8)


def test_trace_estimators_on_device_equal_cpu(device):
    """The probes are drawn on the CPU: the same estimates on every device, to round-off."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    cpu = curvops.HessianOperator(model, loss_fn, data)
    op = curvops.HessianOperator(*moved((model, loss_fn, data), device))
    tr = float(torch.trace(dense_hessian(model, loss_fn, data)))
    estimators = {curvops.hutchinson_trace: "n_probes", curvops.hutchpp_trace: "n_matvecs"}
    for fn, count in estimators.items():
        kw = {count: 30}
        a, b = fn(op, seed=1, **kw), fn(cpu, seed=1, **kw)
        assert a.estimate == pytest.approx(b.estimate, rel=1e-9)
        assert a.n_matvecs == b.n_matvecs == 30
        assert abs(a.estimate - tr) < 6 * a.std_error + 1e-9 * abs(tr)
    diag = curvops.hutchinson_diagonal(op, n_probes=20, seed=2)
    np.testing.assert_allclose(
        diag.diagonal, curvops.hutchinson_diagonal(cpu, n_probes=20, seed=2).diagonal,
        rtol=1e-9, atol=1e-12,
    )  # fmt: skip


def test_spectral_density_on_device_equals_cpu(device):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    cpu = curvops.HessianOperator(model, loss_fn, data)
    op = curvops.HessianOperator(*moved((model, loss_fn, data), device))
    kw = {"n_probes": 3, "lanczos_steps": 10, "n_grid": 200, "seed": 4}
    a, b = curvops.spectral_density(op, **kw), curvops.spectral_density(cpu, **kw)
    assert a.n_matvecs == b.n_matvecs
    assert a.mean() == pytest.approx(b.mean(), rel=1e-9)
    np.testing.assert_allclose(a.nodes, b.nodes, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6, atol=1e-9)
    assert np.trapezoid(a.density, a.grid) == pytest.approx(1.0, abs=1e-3)


def test_analyze_on_device_matches_cpu_and_dense(device):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    kw = {"k": 2, "bottom": 1, "n_probes": 9, "density_probes": 2, "lanczos_steps": 10}
    kw["parts"] = ["top", "trace", "layers"]
    report = curvops.analyze(*moved((model, loss_fn, data), device), **kw)
    cpu = curvops.analyze(model, loss_fn, data, **kw)
    truth = np.linalg.eigvalsh(dense_hessian(model, loss_fn, data).numpy())[::-1][:2]
    assert report.provenance.device.startswith(device.type)
    assert np.all(np.abs(report.top.eigenvalues - truth) <= report.bounds("top"))
    np.testing.assert_allclose(report.top.eigenvalues[0], cpu.top.eigenvalues[0], rtol=1e-6)
    assert report.trace.estimate == pytest.approx(cpu.trace.estimate, rel=1e-9)
    np.testing.assert_allclose(report.layers.eigenvalues, cpu.layers.eigenvalues, rtol=1e-5)


def _tracked(device) -> tuple[list, nn.Module]:
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    model, _, data = moved((model, loss_fn, data), device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = curvops.CurvatureTracker(
        model, loss_fn, data, every=1, k=2, tol=1e-10, trace="hutchinson", trace_probes=6,
        optimizer=opt,
    )  # fmt: skip
    for _ in range(3):
        opt.zero_grad()
        sum(loss_fn(model(X), y) * len(y) for X, y in data).backward()
        opt.step()
        tracker.step()
    return tracker.records, model


def test_tracker_on_device_follows_training_as_on_cpu(device):
    records, model = _tracked(device)
    cpu, cpu_model = _tracked(torch.device("cpu"))
    assert [r.step for r in records] == [1, 2, 3]
    assert next(model.parameters()).device.type == device.type
    for a, b in zip(records, cpu):
        assert all(a.converged)
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-8)
        assert a.trace == pytest.approx(b.trace, rel=1e-9)
        assert a.gradient_norm == pytest.approx(b.gradient_norm, rel=1e-9)
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    H = dense_hessian(cpu_model, loss_fn, data)
    np.testing.assert_allclose(records[-1].eigenvalues, np.linalg.eigvalsh(H)[::-1][:2], rtol=1e-8)


def test_host_transfer_counter_sees_copies(device):
    """The counter itself: a copy to the host counts on a GPU, a scalar read everywhere."""
    x = torch.ones(100, device=device)
    with HostTransfers() as seen:
        x.cpu()
        x[:5].cpu()
        float(x.sum())
    gpu = device.type != "cpu"
    assert seen.copies == ([100] if gpu else []) and seen.small == ([5] if gpu else [])
    assert seen.scalars == 1 and seen.syncs == (2 if gpu else 1)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "kfac"])
def test_host_syncs_per_product_do_not_grow_with_the_batches(device, kind):
    """After the first product a product reads a fixed handful of numbers from the device
    (the model's fingerprint, finiteness, the data checksum), none per batch: each batch's
    loss denominator (here CE with ignored labels) is remembered for the user's own targets."""
    syncs = []
    for sizes in ((8, 8), (4, 4, 4, 4, 4, 4)):
        model, loss_fn, data = make_problem("mlp_tanh", "ce", sizes=sizes)
        data = [(X, y.masked_fill(torch.arange(len(y)) % 3 == 0, -100)) for X, y in data]
        model, loss_fn, data = moved((model, nn.CrossEntropyLoss(), data), device)
        builders = {**{k: build for k in EXACT}, "kfac": _kfac}
        op = builders[kind](kind, model, loss_fn, data)
        V = probes(op.shape[0], 2).to(device)
        first = op.torch_matmat(V)
        with HostTransfers() as seen:
            again = op.torch_matmat(V)
        assert seen.copies == [] and torch.equal(first, again)
        syncs.append(seen.syncs)
    assert syncs[0] == syncs[1] <= 5, syncs


def _kfac(kind, model, loss_fn, data):
    return curvops.KFACOperator(model, loss_fn, data)
