"""Argument checks shared by the algorithms: each error names the argument."""

from __future__ import annotations

import math
import numbers

import numpy as np

from curvops.core.checks import check_count


def check_number(name: str, x: object, low: float = 0.0, strict: bool = False) -> None:
    """A finite real number (not a bool) >= ``low`` (> ``low`` if ``strict``)."""
    ok = isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
    if not (ok and (x > low if strict else x >= low)):  # type: ignore[operator]
        bound = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {bound} {low:g}; got {x!r}")


def check_seed(seed: object) -> None:
    """An integer seed (not a bool, not a float)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer; got {seed!r} ({type(seed).__name__})")


def check_optional_count(name: str, n: object, least: int) -> None:
    """None, or an integer >= ``least``."""
    if n is not None:
        check_count(name, n, least)
