"""Curvature matrices as scipy LinearOperators over the flattened parameters."""

from curvops.operators.base import CurvatureOperator
from curvops.operators.ekfac import EKFACOperator
from curvops.operators.ggn import GGNOperator
from curvops.operators.hessian import HessianOperator
from curvops.operators.inverse import DampedInverse, InverseNotConvergedWarning, damped_inverse
from curvops.operators.kfac import KFACOperator
from curvops.operators.kronecker_operator import StaleOperatorError

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
