"""One call to a full curvature report: ``analyze`` -> ``Report`` (summary, figure, save /
load with provenance), and ``diff_reports`` for two reports (e.g. two checkpoints)."""

from curvops.report.analyze import analyze, build_operator
from curvops.report.diff import ReportDiff, diff_reports
from curvops.report.progress import Feedback
from curvops.report.provenance import Provenance, Step
from curvops.report.report import Report

__all__ = [
    "Feedback",
    "Provenance",
    "Report",
    "ReportDiff",
    "Step",
    "analyze",
    "build_operator",
    "diff_reports",
]
