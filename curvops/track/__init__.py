"""The curvature over training: a tracker of the top eigenpairs, trace, layer scores and
eigenbasis drift, warm-started from one measurement to the next."""

from curvops.track.layers import LayerResult, layer_top_eigenvalues
from curvops.track.record import CurvatureRecord, load_records, write_record
from curvops.track.tracker import CurvatureTracker
from curvops.track.warm import gradient_fraction, subspace_cosines, warm_eigsh

__all__ = [
    "CurvatureTracker",
    "LayerResult",
    "CurvatureRecord",
    "gradient_fraction",
    "layer_top_eigenvalues",
    "load_records",
    "subspace_cosines",
    "warm_eigsh",
    "write_record",
]
