"""Exact vs approximate curvature: errors, traces, spectra, subspace overlap, per block.

``compare(exact, approx)`` takes LinearOperators of one shape (e.g. GGN vs KFAC vs EKFAC).
Curvops operators are matched by parameter (identity and order; see ``align``), others by
shape. For P <= ``dense_max`` every number is exact (dense matrices); above it the
Frobenius errors and traces are seeded Hutchinson estimates with standard errors
(‖M‖_F² = E‖Mz‖², tr M = E zᵀMz, z Rademacher) and the spectra come from ``eigsh``.
"""

from curvops.compare.align import block_names
from curvops.compare.api import compare
from curvops.compare.report import ApproxReport, Comparison

__all__ = ["ApproxReport", "Comparison", "block_names", "compare"]
