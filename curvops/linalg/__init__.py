"""Algorithms on any LinearOperator: eigensolvers, layer spectra, trace, density, eigenbases."""

from curvops.linalg.blocks import block_top_eigenvalues
from curvops.linalg.density import spectral_density
from curvops.linalg.eigenbasis import (
    eigh_with_fallback,
    orthogonal_iteration,
    refresh_eigenbasis,
    sort_by_approx_eigenvalues,
)
from curvops.linalg.eigsh import ConvergenceWarning, eigsh
from curvops.linalg.power import NearTieWarning, power_iteration
from curvops.linalg.results import (
    BlockEigenvalues,
    Density,
    DiagonalEstimate,
    EigenResult,
    PowerResult,
    TraceEstimate,
)
from curvops.linalg.trace import hutchinson_diagonal, hutchinson_trace, hutchpp_trace

__all__ = [
    "BlockEigenvalues",
    "ConvergenceWarning",
    "Density",
    "DiagonalEstimate",
    "EigenResult",
    "NearTieWarning",
    "PowerResult",
    "TraceEstimate",
    "block_top_eigenvalues",
    "eigh_with_fallback",
    "eigsh",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "orthogonal_iteration",
    "power_iteration",
    "refresh_eigenbasis",
    "sort_by_approx_eigenvalues",
    "spectral_density",
]
