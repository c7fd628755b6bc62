"""Exact curvature products: the Hessian, the GGN / Fisher, and the per-batch graph cache."""

from curvops.operators.exact.ggn import GGNOperator
from curvops.operators.exact.hessian import HessianOperator

__all__ = ["GGNOperator", "HessianOperator"]
