"""curvops: the curvature of PyTorch models as scipy LinearOperators, and the algorithms on top."""

from curvops.operators import CurvatureOperator, GGNOperator, HessianOperator

__all__ = ["CurvatureOperator", "GGNOperator", "HessianOperator"]
__version__ = "0.1.0"
