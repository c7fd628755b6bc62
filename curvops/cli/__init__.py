"""The ``curvops`` command: spectrum, compare and demo; factory loading."""

from curvops.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
