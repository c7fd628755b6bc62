"""What ``analyze`` says while it runs: nothing by default; with ``progress`` a start line,
a bar per step, a note before a long step and a line per result (no test reads a clock)."""

import importlib
import io

import pytest
from conftest import analyze

from curvops.report.progress import Feedback, duration, long_step_note


def test_quiet_by_default(problem, capsys):
    analyze(*problem, parts=["top", "trace"])
    assert capsys.readouterr() == ("", "")


def test_progress_true_writes_the_start_line_bars_and_results_to_stderr(problem, capsys):
    report = analyze(*problem, parts=["top", "bottom", "trace", "density", "layers"])
    text = capsys.readouterr()
    assert text == ("", "")
    analyze(*problem, parts=["top", "bottom", "trace", "density", "layers"], progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line and line[0] != " "]
    assert lines[0] == (
        "Sequential: Hessian of CrossEntropyLoss (mean); P = 83 parameters, N = 16 data "
        f"points, cpu, float64, {report.provenance.threads} thread"
        + "s"
        * (report.provenance.threads != 1)
    )
    assert [line.split(":")[0] for line in lines[1:]] == [
        "top", "bottom", "trace", "density", "layers",
    ]  # fmt: skip
    assert lines[3].startswith(f"trace: tr A = {report.trace.estimate:.6g} ± ")
    assert "  trace:" in err and "/30" in err  # the trace's bar knows its total: an ETA


def test_a_feedback_sends_lines_and_notes_where_asked(problem, monkeypatch, capsys):
    module = importlib.import_module("curvops.report.analyze")  # the name is the function's
    monkeypatch.setattr(module, "LARGE_DENSE", 50)  # P = 83 counts as large here
    lines, notes = io.StringIO(), io.StringIO()
    analyze(*problem, parts=["compare"], progress=Feedback(lines=lines, notes=notes))
    assert capsys.readouterr() == ("", "")
    assert notes.getvalue().startswith(
        "note: compare builds the exact GGN densely: 83 products (one per parameter) and "
        "83 x 83 matrices"
    )
    assert "compare: exact GGN vs KFAC rel. error" in lines.getvalue()
    assert "[83 products" in lines.getvalue()


def test_a_landscape_line_per_slice(problem):
    lines = io.StringIO()
    report = analyze(*problem, parts=["top", "landscape"], slices=2, progress=Feedback(lines=lines))
    assert [cut.names for cut in report.landscapes] == [["$v_1$"], ["$v_2$"]]
    last = lines.getvalue().splitlines()[-1]
    assert last.startswith("landscape: v_1: λ = ") and "; v_2: λ = " in last


@pytest.mark.parametrize(
    ("products", "seconds", "exact", "note"),
    [
        (99, 0.1, True, None),
        (2500, 0.1, True, "note: compare will take about 4.2 min (2,500 products, 0.1 s each"),
        (40, 2.0, False, "note: compare will take at least 80 s (at least 40 products, 2 s each"),
    ],
)
def test_long_step_note(products, seconds, exact, note):
    text = long_step_note("compare", products, seconds, exact)
    assert text == note if note is None else text.startswith(note)


def test_durations_read_naturally():
    assert [duration(s) for s in (45, 210, 9000)] == ["45 s", "3.5 min", "2.5 h"]
