"""curvops: the curvature of PyTorch models as scipy LinearOperators, and the algorithms on top."""

from curvops import distributed
from curvops.compare import Comparison, compare
from curvops.core.lm import CausalLMLoss, MaskedLMLoss
from curvops.landscapes import Landscape, landscape
from curvops.linalg import *  # noqa: F403
from curvops.linalg import __all__ as _linalg_all
from curvops.operators import *  # noqa: F403
from curvops.operators import __all__ as _operators_all
from curvops.report import Report, ReportDiff, analyze, diff_reports
from curvops.track import CurvatureRecord, CurvatureTracker

__all__ = [
    "CausalLMLoss",
    "Comparison",
    "CurvatureRecord",
    "CurvatureTracker",
    "Landscape",
    "MaskedLMLoss",
    "Report",
    "ReportDiff",
    "analyze",
    "compare",
    "diff_reports",
    "distributed",
    "landscape",
    *_operators_all,
    *_linalg_all,
]
__version__ = "0.2.0.dev0"
