"""Memory that respects the machine: the cache budget's rule (a fixed fraction of the
available memory) and a batched matmat's columns per pass within a budget."""

import torch
from models import make_problem
from oracles import dense_hessian

import curvops
from curvops.core import memory


def test_auto_budget_is_a_fixed_fraction_of_available_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.HessianOperator(model, loss_fn, data)
    assert op._cache.budget == memory.AUTO_FRACTION * 8 * 2**30
    assert op._loop.keep_bytes == op._cache.budget
    fixed = curvops.GGNOperator(model, loss_fn, data, graph_cache_mib=3.0)
    assert fixed._cache.budget == 3 * 2**20


def test_available_memory_is_read_from_the_machine(monkeypatch):
    cpu = torch.device("cpu")
    available = memory.available_bytes(cpu)
    assert available is None or available > 0
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setattr(memory, "_sysconf_available", lambda: None)
    assert memory.auto_budget_mib(cpu) == memory.FALLBACK_MIB


def test_batched_matmat_runs_within_its_budget():
    """c = max(1, ⌊budget / (4 P s + g)⌋) columns per data pass; the same product."""
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    op = curvops.HessianOperator(model, loss_fn, data, column_mode="batched")
    H = dense_hessian(model, loss_fn, data)
    V = torch.randn(op.shape[0], 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.torch_matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    per_column = op._plan.column_bytes + op._cache.largest
    assert op._plan.column_bytes == 4 * op.shape[0] * 8 and op._cache.largest > 0
    op._plan.budget = 2.5 * per_column
    assert op._plan.columns_per_pass(5, op._cache.largest) == 2
    passes = []
    pass_of = op._data_pass
    op._data_pass = lambda M: passes.append(M.shape[1]) or pass_of(M)
    torch.testing.assert_close(op.torch_matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    assert passes == [2, 2, 1]
    op._plan.budget = 0.0
    assert op._plan.columns_per_pass(5, op._cache.largest) == 1
