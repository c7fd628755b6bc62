"""curvops: the curvature of PyTorch models as scipy LinearOperators, and the algorithms on top."""

from curvops import distributed
from curvops.operators import CurvatureOperator, GGNOperator, HessianOperator

__all__ = ["distributed", "CurvatureOperator", "GGNOperator", "HessianOperator"]
__version__ = "0.1.0"
