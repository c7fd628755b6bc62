"""``diff_reports``: a report against itself, and two checkpoints of one training run."""

import numpy as np
import pytest
import torch
from conftest import analyze, make_problem

import curvops


def test_a_report_against_itself_has_no_change(report):
    diff = curvops.diff_reports(report, report)
    for section in ("top", "bottom", "trace", "density", "layers", "compare"):
        assert diff.section(section), section
        assert (diff.changes(section) == 0).all(), section
    assert not any(r.significant for r in diff.rows)
    assert diff.differing_settings == {} and not diff.section("versions")
    assert "same model, data size, settings and versions" in str(diff)


@pytest.fixture(scope="module")
def checkpoints():
    """Reports of one model before and after 20 SGD steps (the second with another tol)."""
    model, loss_fn, data = make_problem()
    first = analyze(model, loss_fn, data, parts=["top", "bottom", "trace", "layers"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):
        for X, y in data:
            opt.zero_grad()
            loss_fn(model(X), y).backward()
            opt.step()
    second = analyze(model, loss_fn, data, parts=["top", "bottom", "trace", "layers"], tol=1e-7)
    return first, second


def test_two_checkpoints_show_the_changed_eigenvalues(checkpoints):
    a, b = checkpoints
    diff = curvops.diff_reports(a, b, labels=("step 0", "step 20"))
    top = diff.section("top")
    assert [r.name for r in top] == [f"λ_{i}" for i in range(1, 6)]
    expected = (b.top.eigenvalues - a.top.eigenvalues) / np.abs(a.top.eigenvalues)
    np.testing.assert_allclose(diff.changes("top"), expected, rtol=1e-12)
    assert all(r.significant for r in top)  # the changes exceed the bounds by far
    assert [r.name for r in diff.section("bottom")] == ["λ_P-2", "λ_P-1", "λ_P"]
    np.testing.assert_array_equal([r.b for r in diff.section("bottom")], b.bottom.eigenvalues)
    assert [r.name for r in diff.section("layers")] == [
        "0 Linear: λ_b",
        "0 Linear: score",
        "2 Linear: λ_b",
        "2 Linear: score",
    ]
    assert diff.differing_settings == {"tol": (1e-6, 1e-7)}
    text = diff.table()
    assert "step 0" in text and "step 20" in text and "beyond the bounds" in text
    assert f"{a.top.eigenvalues[0]:.6g}" in text and f"{b.top.eigenvalues[0]:.6g}" in text
    assert diff.to_dict()["labels"] == ["step 0", "step 20"]
