"""Kronecker-factored curvature: factor capture, Kronecker algebra, KFAC and EKFAC."""

from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator
from curvops.operators.kronecker.operator import KroneckerInverse, KroneckerOperator

__all__ = ["EKFACOperator", "KFACOperator", "KroneckerInverse", "KroneckerOperator"]
