"""Curvature matrices as scipy LinearOperators over the flattened parameters."""

from curvops.core.errors import StaleOperatorError
from curvops.operators.base import CurvatureOperator
from curvops.operators.exact import GGNOperator, HessianOperator
from curvops.operators.inverse import DampedInverse, InverseNotConvergedWarning, damped_inverse
from curvops.operators.kronecker import EKFACOperator, KFACOperator

__all__ = [
    "CurvatureOperator",
    "DampedInverse",
    "EKFACOperator",
    "GGNOperator",
    "HessianOperator",
    "InverseNotConvergedWarning",
    "KFACOperator",
    "StaleOperatorError",
    "damped_inverse",
]
