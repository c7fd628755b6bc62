"""The demo's tracked run: one JSON line per measurement, a sharpness that a dense
eigendecomposition of the Hessian at the final parameters confirms, and the figure."""

import copy
import json

import numpy as np
import pytest
from oracles import dense_hessian

from curvops.cli.demo_track import describe, tracked_run
from curvops.track import load_records

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("track")
    summary, tracker = tracked_run(out, steps=6, every=3, lr=1.0, k=2, hidden=4, num_train=100)
    return out, summary, tracker


def test_one_record_per_measurement(run):
    out, summary, tracker = run
    rows = [json.loads(line) for line in (out / "track.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6] and summary["measurements"] == 3
    for r in rows:
        assert len(r["eigenvalues"]) == 2 and r["n_matvecs"] > 0
        assert r["two_over_lr"] == 2.0 and len(r["layer_scores"]) == 3  # the three Linear layers
    assert [r["warm"] for r in rows] == [False, True, True]
    assert [r.eigenvalues for r in load_records(out / "track.jsonl")] == [
        r.eigenvalues for r in tracker.records
    ]
    assert summary["steps"] == 6 and summary["sharpness_last"] == rows[-1]["eigenvalues"][0]


def test_sharpness_matches_a_dense_hessian(run):
    out, summary, tracker = run
    ((X, Y),) = tracker.data
    model = copy.deepcopy(tracker.model).double()  # the final parameters
    H = dense_hessian(model, tracker.loss_fn, [(X.double(), Y.double())])
    top = np.linalg.eigvalsh(H.numpy())[::-1][:2]
    np.testing.assert_allclose(tracker.records[-1].eigenvalues, top, rtol=1e-3)
    np.testing.assert_allclose(summary["eigenvalues_last_cold"], top, rtol=1e-3)


def test_figure_and_summary_line(run):
    out, summary, _ = run
    assert (out / "track.png").read_bytes()[:8] == PNG
    line = describe(summary)
    assert "η = 1, 6 steps" in line and "2/η = 2.000" in line and "3 measurements" in line
