"""curvops: the curvature of PyTorch models as scipy LinearOperators, and the algorithms on top."""

from curvops import distributed
from curvops.compare import Comparison, compare
from curvops.operators import CurvatureOperator, GGNOperator, HessianOperator

__all__ = [
    "distributed",
    "compare",
    "Comparison",
    "CurvatureOperator",
    "GGNOperator",
    "HessianOperator",
]
__version__ = "0.1.0"
