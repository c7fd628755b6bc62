"""Smoke test of benchmarks/track.py (no timing is asserted): a short run, its table and sweep."""

import pytest
import torch

pytest.importorskip("sklearn")
from benchmarks import track  # noqa: E402
from curvops.cli.digits import load_digits_data, make_mlp  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_short_run_fills_every_column(monkeypatch):
    monkeypatch.setattr(track, "EVERY", 5)
    data = load_digits_data(num_train=300)
    torch.manual_seed(0)
    run = track.Run("tiny", make_mlp(hidden=8), data.train[:1], layers=True)
    run.warm.every = run.block.every = 5
    track.train(run, data, steps=10)
    assert [r["step"] for r in run.rows] == [5, 10]
    summary = track.summary(run)
    assert summary["all_converged"] and summary["max_warm_diff"] < 1e-3
    assert summary["layers_warm_per_measurement"] > 0
    assert track.table([run]).count("| tiny |") == 2


def test_rel_diff_and_sweep_table():
    assert track.rel_diff([2.0, 1.0], [2.0, 0.5]) == 1.0
    row = {"every": 5, "measurements": 3, "cold_per_measurement": 30.0,
           "warm_per_measurement": 24.0, "warm_over_cold": 0.8, "max_diff": 1e-6,
           "mean_drift": 0.05}  # fmt: skip
    assert "| 5 | 3 | 30.0 | 24.0 | 0.80 | 1.0e-06 | 0.050 |" in track.sweep_table([row])
