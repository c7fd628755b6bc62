"""``Report.save`` / ``Report.load``: exact round trips, strict JSON, the files written."""

import copy
import json
import math

import numpy as np
import pytest

import curvops
from curvops.core.records import decode, encode, same


def test_save_then_load_gives_an_equal_report_with_eigenvectors(tmp_path, report):
    pytest.importorskip("matplotlib")
    folder = report.save(tmp_path / "r")
    assert sorted(p.name for p in folder.iterdir()) == [
        "eigenvectors.npz",
        "report.json",
        "report.png",
    ]
    loaded = curvops.Report.load(folder)
    assert loaded == report and loaded is not report
    for key in ("top", "bottom"):
        vectors = getattr(loaded, key).eigenvectors
        assert vectors.dtype == np.float64 and vectors.shape == (
            83,
            len(getattr(report, key).eigenvalues),
        )
        assert np.array_equal(vectors, getattr(report, key).eigenvectors)  # bit for bit
    assert loaded.provenance.steps == report.provenance.steps
    assert loaded.summary() == report.summary()


def test_without_vectors_everything_else_round_trips(tmp_path, report):
    folder = report.save(tmp_path / "r", vectors=False, figure=False)
    assert sorted(p.name for p in folder.iterdir()) == ["report.json"]
    loaded = curvops.Report.load(folder)
    assert loaded.top.eigenvectors.shape == (0, len(report.top.eigenvalues))
    assert loaded != report
    loaded.top.eigenvectors = report.top.eigenvectors
    loaded.bottom.eigenvectors = report.bottom.eigenvectors
    assert loaded == report


def test_a_later_save_removes_the_files_it_does_not_write(tmp_path, report):
    report.save(tmp_path, figure=False)
    assert (tmp_path / "eigenvectors.npz").is_file()
    report.save(tmp_path, vectors=False, figure=False)
    assert not (tmp_path / "eigenvectors.npz").exists()  # stale vectors of another report


def test_report_json_is_strict_and_readable(tmp_path, report):
    nan_report = copy.deepcopy(report)
    nan_report.layers.scores[1] = math.nan  # as for a block with zero curvature
    nan_report.save(tmp_path, vectors=False, figure=False)
    text = (tmp_path / "report.json").read_text()

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    data = json.loads(text, parse_constant=refuse)
    assert data["format"] == "curvops-report" and data["format_version"] == 1
    assert data["layers"]["scores"][1] is None
    assert data["top"]["bounds"] == report.bounds("top").tolist()
    assert "eigenvectors" not in data["top"]
    assert data["provenance"]["settings"]["tol"] == 1e-6
    assert set(data["provenance"]["steps"]["top"]) == {"products", "seconds"}
    loaded = curvops.Report.load(tmp_path)
    assert math.isnan(loaded.layers.scores[1])
    assert loaded == _without_vectors(nan_report)  # NaN == NaN in the deep equality


def _without_vectors(report):
    out = copy.deepcopy(report)
    for key in ("top", "bottom"):
        result = getattr(out, key)
        result.eigenvectors = np.zeros((0, len(result.eigenvalues)))
    return out


def test_load_refuses_a_folder_without_a_report_and_other_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report.json"):
        curvops.Report.load(tmp_path)
    (tmp_path / "report.json").write_text('{"eigenvalues": [1.0]}')
    with pytest.raises(ValueError, match="not a curvops report"):
        curvops.Report.load(tmp_path)


def test_records_round_trip_arrays_bools_nan_and_nested_dataclasses():
    result = curvops.EigenResult(
        eigenvalues=np.array([2.0, -0.0, math.nan]),
        eigenvectors=np.array([[0.6, 0.8, 0.0], [0.8, -0.6, 1.0]]),
        residual_norms=np.array([1e-300, 0.1 + 0.2, 5e-324]),
        converged=np.array([True, False, True]),
        n_matvecs=7,
        seconds=0.25,
        backend="lanczos",
        which="LA",
    )
    back = decode(curvops.EigenResult, json.loads(json.dumps(encode(result), allow_nan=False)))
    assert same(back, result) and back.converged.dtype == bool
    assert np.signbit(back.eigenvalues[1])  # -0.0 survives
    assert not same(back, curvops.EigenResult(**{**vars(result), "n_matvecs": 8}))


def test_landscapes_round_trip_and_get_their_figure(tmp_path, problem):
    pytest.importorskip("matplotlib")
    from conftest import analyze

    report = analyze(*problem, parts=["top", "landscape"], slices=2)
    folder = report.save(tmp_path / "r", vectors=False)
    assert (folder / "landscape.png").stat().st_size > 10_000
    loaded = curvops.Report.load(folder)
    assert loaded.landscapes == report.landscapes and len(loaded.landscapes) == 2
    report.landscapes = []
    report.save(folder, vectors=False)  # a later save without them removes the figure
    assert not (folder / "landscape.png").exists()
