"""Curvature matrices as scipy LinearOperators over the flattened parameters."""

from curvops.operators.base import CurvatureOperator
from curvops.operators.ggn import GGNOperator
from curvops.operators.hessian import HessianOperator

__all__ = ["CurvatureOperator", "GGNOperator", "HessianOperator"]
