"""The option types and the help format of the ``curvops`` command.

Every type raises ``argparse.ArgumentTypeError`` (a usage error: one line, exit code 2).
Choices are case-insensitive: their options take ``type=str.lower`` (or ``str.upper``),
so ``--curvature GGN`` works.
"""

from __future__ import annotations

import argparse
import math
import re

APPROXIMATIONS = ("kfac", "ekfac", "ggn-mc", "ggn-empirical")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default at the end of its help; a flag says it is off by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        if action.default is None:
            return text
        return text + " (default: %(default)s)"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def tolerance(text: str) -> float:
    """A relative tolerance in (0, 1)."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a tolerance below 1 (e.g. 1e-4), got {text}")
    return value


def regex(text: str) -> str:
    """A regular expression (checked now, matched against parameter names later)."""
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"not a regular expression: {text!r} ({err})") from None
    return text


def approximations(text: str) -> list[str]:
    """A comma-separated list of approximations, lower-cased, each known, none twice."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one of {', '.join(APPROXIMATIONS)}")
    for name in names:
        if name not in APPROXIMATIONS:
            raise argparse.ArgumentTypeError(
                f"unknown approximation {name!r}; choose from {', '.join(APPROXIMATIONS)}"
            )
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"an approximation is named twice in {text!r}")
    return names
