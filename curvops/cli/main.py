"""The ``curvops`` command: ``demo``, ``spectrum``, ``compare`` and ``track``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from curvops.core.options import Backend, CurvatureKind, Which, choices


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit code 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="curvops", description="Curvature of PyTorch models.")
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="train small nets on digits and analyse their curvature")
    demo.add_argument("--out", default="demo_output", help="folder for results.json and figures")
    _common(demo, k=10, threads=1)

    spec = sub.add_parser("spectrum", help="top-k eigenvalues (and density) of your model")
    spec.add_argument("factory", help="FILE.py:FACTORY returning (model, loss_fn, data)")
    spec.add_argument("--curvature", choices=choices(CurvatureKind), default="hessian")
    spec.add_argument("--which", choices=choices(Which), default="LA")
    spec.add_argument("--backend", choices=choices(Backend), default="lanczos")
    spec.add_argument("--tol", type=float, default=1e-4)
    spec.add_argument("--density", action="store_true", help="also the spectral density (SLQ)")
    spec.add_argument("--layers", action="store_true", help="also the per-layer top eigenvalues")
    spec.add_argument("--out", default="curvops_output")
    _common(spec, k=20)

    cmp = sub.add_parser("compare", help="exact GGN vs Kronecker-factored approximations")
    cmp.add_argument("factory", help="FILE.py:FACTORY returning (model, loss_fn, data)")
    cmp.add_argument("--approx", default="kfac,ekfac", help="comma-separated: kfac, ekfac, ...")
    cmp.add_argument("--exact", choices=("ggn", "hessian"), default="ggn")
    cmp.add_argument("--out", default="curvops_output")
    _common(cmp, k=10)
    _track(sub)
    return parser


def _track(sub) -> None:
    trk = sub.add_parser("track", help="train with the factory's optimizer, tracking the curvature")
    trk.add_argument(
        "factory", help="FILE.py:FACTORY returning (model, loss_fn, data[, optimizer])"
    )
    trk.add_argument("--steps", type=_positive_int, default=100, help="optimizer steps")
    trk.add_argument("--every", type=_positive_int, default=10, help="measure every M steps")
    lr_help = "SGD's learning rate, for a factory without an optimizer"
    trk.add_argument("--lr", type=_positive_float, default=None, help=lr_help)
    kinds = ("hessian", "ggn", "ggn-mc", "ggn-empirical")
    trk.add_argument("--curvature", choices=kinds, default="hessian")
    trk.add_argument("--which", choices=choices(Which), default="LA")
    trk.add_argument("--tol", type=float, default=1e-4)
    trk.add_argument("--trace", choices=("hutchinson", "hutch++"), default=None)
    trk.add_argument("--layers", action="store_true", help="also the per-layer scores")
    trk.add_argument("--out", default="curvops_output")
    _common(trk, k=5)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _common(p: argparse.ArgumentParser, k: int, threads: int | None = None) -> None:
    p.add_argument(
        "--k", type=_positive_int, default=k, help=f"number of eigenvalues (default {k})"
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=threads,
        help="torch CPU threads (default: "
        + (f"{threads}, fastest for small models on a busy machine)" if threads else "torch's)"),
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the model's")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(  # also accepted after the command; SUPPRESS keeps the top-level value
        "--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _job(args.command)(args)
    except KeyboardInterrupt:
        print("curvops: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a user's mistake gets one line; --traceback shows the rest
        if args.traceback:
            raise
        print(f"curvops {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


def _job(command: str) -> Callable[[argparse.Namespace], dict]:
    """The function behind a command (imported late: torch loads only after parsing)."""
    if command == "demo":
        from curvops.cli.demo import run_demo

        return run_demo
    if command == "track":
        from curvops.cli.track import run_track

        return run_track
    from curvops.cli import jobs

    return getattr(jobs, f"run_{command}")


def _one_line(err: Exception) -> str:
    """The error as one line; unexpected kinds are named and point to --traceback."""
    text = " ".join(str(err).split()) or "(no message)"
    if isinstance(err, ValueError):  # curvops' own checks: the message says it all
        return text
    return f"{type(err).__name__}: {text} (run with --traceback for details)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
