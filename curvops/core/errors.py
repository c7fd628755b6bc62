"""The exceptions curvops raises besides ValueError / TypeError / FloatingPointError."""

from __future__ import annotations


class StaleOperatorError(RuntimeError):
    """The model changed (parameters, buffers, modules, attributes, hooks) since the
    operator was built or refreshed."""


class NotSymmetricError(ValueError):
    """An algorithm that assumes a real symmetric operator was given one that is not."""
