"""Loss landscapes: slices of the whole-data loss along directions that matter (top
eigenvectors, random filter-normalised ones), with the quadratic model overlaid."""

from curvops.landscapes.compute import eigen_slices, landscape
from curvops.landscapes.directions import filter_normalized
from curvops.landscapes.figure import plot_landscape, plot_slices
from curvops.landscapes.result import Landscape

__all__ = [
    "Landscape",
    "eigen_slices",
    "filter_normalized",
    "landscape",
    "plot_landscape",
    "plot_slices",
]
