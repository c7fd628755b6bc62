"""The tracker's schedule, its operators following the model, modes, and bad arguments."""

import numpy as np
import pytest
import torch
from models import make_problem
from torch import nn
from tracking import full_batch_loss, sgd_run

import curvops
from curvops.track import CurvatureTracker


def test_step_counts_and_measures_on_schedule():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    tracker = CurvatureTracker(model, loss_fn, data, every=3, k=2)
    out = [tracker.step() for _ in range(7)]
    assert [i + 1 for i, r in enumerate(out) if r is not None] == [3, 6]
    assert tracker.measure().step == 7 and len(tracker.records) == 3
    assert tracker.step(step=9) is not None and tracker.count == 9
    odd = CurvatureTracker(model, loss_fn, data, every=lambda s: s in (2, 5), k=2)
    assert [s for s in range(1, 7) if odd.step() is not None] == [2, 5]


def test_operators_are_built_once_and_follow_the_parameters():
    """After SGD steps the built-once operators give what fresh ones give (no stale state);
    KFAC is refreshed to the new parameters, EKFAC's bases by a QR step from the old ones."""

    def make(model, loss_fn, data, opt):
        kw = {"approximations": ("kfac", "ekfac"), "curvature": "ggn", "tol": 1e-10}
        return [CurvatureTracker(model, loss_fn, data, every=10, k=3, **kw)]

    model, loss_fn, data, (tracker,), _ = sgd_run(make, steps=20, lr=0.5)
    first_op = tracker.operator
    fresh = curvops.GGNOperator(model, loss_fn, data)
    truth = curvops.eigsh(fresh, k=3, tol=1e-10).eigenvalues
    np.testing.assert_allclose(tracker.records[-1].eigenvalues, truth, rtol=1e-9)
    assert tracker.operator is first_op
    report = curvops.compare(fresh, {"KFAC": curvops.KFACOperator(model, loss_fn, data)}, k=3)
    last, before = tracker.records[-1].approximations, tracker.records[0].approximations
    assert last["KFAC"]["frobenius_error"] == pytest.approx(report["KFAC"].frobenius_error, 1e-9)
    assert last["KFAC"]["frobenius_error"] != pytest.approx(before["KFAC"]["frobenius_error"])
    ekfac = curvops.compare(fresh, curvops.EKFACOperator(model, loss_fn, data), k=3)
    assert abs(last["EKFAC"]["frobenius_error"] - ekfac.approximations[0].frobenius_error) < 0.05


def test_measures_in_eval_mode_and_restores_the_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 3)).double()
    _, loss_fn, data = make_problem("mlp_tanh", "ce")
    tracker = CurvatureTracker(model, loss_fn, data, every=1, k=2)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        full_batch_loss(model, loss_fn, data).backward()
        opt.step()
        assert tracker.step() is not None
        assert all(m.training for m in model.modules())
    strict = CurvatureTracker(model, loss_fn, data, every=1, k=2, eval_mode=False)
    with pytest.raises(ValueError, match="Dropout '1' is in train mode"):
        strict.measure()


def test_verify_recomputes_the_residuals():
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    tracker = CurvatureTracker(model, loss_fn, data, every=1, k=3, tol=1e-9, verify=True)
    record = tracker.measure()
    assert record.matvecs["verify"] == 3 and record.all_converged
    assert record.n_matvecs == record.matvecs["eigsh"] + 3


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"every": 0}, "every must be an integer >= 1"),
        ({"k": 0}, "k must be an integer >= 1"),
        ({"curvature": "kfac"}, "curvature must be one of 'hessian', 'ggn'"),
        ({"method": "arpack"}, "method must be one of 'lanczos', 'lobpcg'"),
        ({"trace": "exact"}, "trace must be one of 'hutchinson', 'hutch\\+\\+'"),
        ({"approximations": ("shampoo",)}, "approximations must be one of 'kfac', 'ekfac'"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kw, message):
    model, loss_fn, data = make_problem("mlp_tanh", "ce")
    with pytest.raises(ValueError, match=message):
        CurvatureTracker(model, loss_fn, data, **kw)
