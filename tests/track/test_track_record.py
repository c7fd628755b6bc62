"""Records: complete, logged as JSON lines as they come, JSON round-trip, and the figure."""

import json
import math

import numpy as np
import pytest
import torch
from tracking import sgd_run

from curvops.track import CurvatureRecord, CurvatureTracker, load_records

FIELDS = {
    "step", "eigenvalues", "residual_norms", "converged", "n_matvecs", "seconds", "matvecs",
    "trace", "trace_stderr", "layer_names", "layer_scores", "subspace_cosines",
    "gradient_fraction", "lr", "two_over_lr", "approximations",
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    log = tmp_path_factory.mktemp("track") / "records.jsonl"

    def make(model, loss_fn, data, opt):
        kw = {"trace": "hutchinson", "layers": True, "approximations": ("kfac", "ekfac")}
        return [CurvatureTracker(model, loss_fn, data, 5, 3, optimizer=opt, log=log, **kw)]

    _, _, _, (tracker,), _ = sgd_run(make, steps=15, lr=0.5)
    return tracker, log


def test_records_are_complete(run):
    tracker, _ = run
    assert [r.step for r in tracker.records] == [5, 10, 15]
    for i, r in enumerate(tracker.records):
        d = r.to_dict()
        assert set(d) >= FIELDS
        assert len(r.eigenvalues) == len(r.residual_norms) == len(r.converged) == 3
        assert r.n_matvecs == sum(r.matvecs.values()) and set(r.matvecs) == {
            "eigsh", "trace", "layers"
        }  # fmt: skip
        assert r.lr == 0.5 and r.two_over_lr == 4.0
        assert r.trace_method == "hutchinson" and r.trace_stderr > 0
        assert 0 <= r.gradient_fraction <= 1 and r.gradient_norm > 0
        assert np.nanmax(r.layer_scores) == 1.0 and r.layer_names == ["0", "2"]
        assert set(r.approximations) == {"KFAC", "EKFAC"}
        assert 0 < r.approximations["KFAC"]["frobenius_error"] < 1
        if i == 0:
            assert r.subspace_cosines is None and not r.warm and math.isnan(r.drift)
        else:
            assert len(r.subspace_cosines) == 3 and r.warm and 0 <= r.drift <= 1
            assert r.principal_angles.shape == (3,)


def test_log_holds_one_json_line_per_record_and_round_trips(run):
    tracker, log = run
    lines = log.read_text().splitlines()
    assert len(lines) == len(tracker.records)
    for line, record in zip(lines, tracker.records):
        assert json.loads(line) == record.to_dict()
    loaded = load_records(log)
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in tracker.records]
    again = CurvatureRecord.from_dict(json.loads(json.dumps(tracker.records[-1].to_dict())))
    assert again.to_dict() == tracker.records[-1].to_dict()


def test_nan_is_written_as_null_and_read_back_as_nan():
    r = CurvatureRecord(1, [1.0, math.nan], [0.0, math.inf], [True, False], 3, 0.1)
    d = json.loads(r.to_json())
    assert d["eigenvalues"] == [1.0, None] and d["residual_norms"] == [0.0, None]
    back = CurvatureRecord.from_dict(d)
    assert math.isnan(back.eigenvalues[1]) and math.isnan(back.residual_norms[1])
    with pytest.raises(ValueError, match="unknown CurvatureRecord fields: bogus"):
        CurvatureRecord.from_dict({**d, "bogus": 1})


def test_plot_draws_every_panel(run, tmp_path):
    pytest.importorskip("matplotlib")
    tracker, _ = run
    fig = tracker.plot(tmp_path / "tracking.png")
    assert (tmp_path / "tracking.png").stat().st_size > 10_000
    titles = [ax.get_title() for ax in fig.axes]
    for title in ("Top eigenvalues (hessian)", "Trace (hutchinson)", "Layer scores"):
        assert title in titles
    assert "Top-k eigenspace drift" in titles


def test_micro_batch_size_goes_to_the_exact_operators_only():
    """One set of operator options: the exact ones split their batches, KFAC takes the rest."""
    from torch import nn

    from curvops.track.operators import build

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    data = [(torch.randn(6, 3), torch.randint(0, 2, (6,)))]
    ops = build(model, nn.CrossEntropyLoss(), data, "hessian", False, ("kfac",),
                {"micro_batch_size": 2})  # fmt: skip
    assert ops.main.micro_batch_size == 2 and ops.exact.micro_batch_size == 2
    assert type(ops.approx["KFAC"]).__name__ == "KFACOperator"
