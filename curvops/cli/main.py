"""The ``curvops`` command: ``demo``, ``spectrum``, ``compare``, ``track`` and ``diff``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from curvops.cli import options as opt
from curvops.cli.advice import command_line_warnings, one_line
from curvops.cli.output import default_out
from curvops.core.options import Backend, CurvatureKind, Which, choices

FACTORY_HELP = "FILE.py:FACTORY, a function in FILE.py returning (model, loss_fn, data)"
TRACKED = ("hessian", "ggn", "ggn-mc", "ggn-empirical")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit code 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="curvops",
        description="Curvature of PyTorch models: spectra, traces, densities, layer "
        "sharpness, KFAC quality, loss landscapes, curvature over training.",
        formatter_class=opt.HelpFormatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _demo(sub)
    _spectrum(sub)
    _compare(sub)
    _track(sub)
    _diff(sub)
    return parser


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=opt.HelpFormatter)


def _demo(sub) -> None:
    demo = _command(sub, "demo", "train small nets on digits and analyse their curvature")
    demo.add_argument("--out", default="demo_output", help="folder for the results and figures")
    _common(demo, k=10, k_help="number of top eigenvalues per model")


def _spectrum(sub) -> None:
    spec = _command(sub, "spectrum", "extreme eigenvalues (and more) of your model's curvature")
    spec.add_argument("factory", help=FACTORY_HELP)
    spec.add_argument(
        "--curvature", type=str.lower, choices=choices(CurvatureKind), default="hessian",
        help="the curvature matrix",
    )  # fmt: skip
    spec.add_argument(
        "--which", type=str.upper, choices=choices(Which), default="LA",
        help="LA: the k largest eigenvalues; SA: the k smallest; LM: the k largest |λ|; "
        "BE: both ends (k//2 smallest, the rest largest)",
    )  # fmt: skip
    _solver(spec)
    spec.add_argument("--trace", action="store_true", help="also the trace (Hutch++)")
    spec.add_argument("--density", action="store_true", help="also the spectral density (SLQ)")
    spec.add_argument("--layers", action="store_true", help="also the top eigenvalue per layer")
    spec.add_argument(
        "--landscape", action="store_true",
        help="also the loss along the top 3 eigenvectors with its quadratic model",
    )  # fmt: skip
    spec.add_argument(
        "--vectors", action="store_true", help="also write eigenvectors.npz (P x k numbers)"
    )
    _factory_options(spec, "spectrum", k=20, k_help="number of eigenvalues")


def _compare(sub) -> None:
    cmp = _command(sub, "compare", "exact GGN (or Hessian) vs Kronecker-factored approximations")
    cmp.add_argument("factory", help=FACTORY_HELP)
    cmp.add_argument(
        "--approx", type=opt.approximations, default="kfac,ekfac",
        help=f"comma-separated approximations, of {', '.join(opt.APPROXIMATIONS)}",
    )  # fmt: skip
    cmp.add_argument(
        "--exact", type=str.lower, choices=("ggn", "hessian"), default="ggn",
        help="the exact curvature they are compared with",
    )  # fmt: skip
    _factory_options(cmp, "compare", k=10, k_help="number of top eigenpairs compared")


def _track(sub) -> None:
    trk = _command(sub, "track", "train with the factory's optimizer, tracking the curvature")
    trk.add_argument(
        "factory", help="FILE.py:FACTORY returning (model, loss_fn, data[, optimizer])"
    )
    trk.add_argument("--steps", type=opt.positive_int, default=100, help="optimizer steps")
    trk.add_argument("--every", type=opt.positive_int, default=10, help="measure every M steps")
    trk.add_argument(
        "--lr", type=opt.positive_float, default=None,
        help="SGD's learning rate, for a factory without an optimizer (default: the "
        "factory's optimizer)",
    )  # fmt: skip
    trk.add_argument(
        "--curvature", type=str.lower, choices=TRACKED, default="hessian", help="the curvature"
    )
    trk.add_argument(
        "--which", type=str.upper, choices=choices(Which), default="LA",
        help="LA / SA: largest / smallest; LM: largest |λ|; BE: both ends",
    )  # fmt: skip
    trk.add_argument("--tol", type=opt.tolerance, default=1e-4, help="eigsh's relative tolerance")
    trk.add_argument(
        "--trace", type=str.lower, choices=("hutchinson", "hutch++"), default=None,
        help="also the trace by this estimator (default: no trace)",
    )  # fmt: skip
    trk.add_argument("--layers", action="store_true", help="also the per-layer scores")
    _factory_options(trk, "track", k=5, k_help="number of eigenvalues per measurement")


def _diff(sub) -> None:
    diff = _command(sub, "diff", "two saved reports side by side (e.g. two checkpoints)")
    diff.add_argument("a", help="a folder with report.json (from spectrum, compare, save())")
    diff.add_argument("b", help="the folder to compare it with")
    diff.add_argument(
        "--labels", nargs=2, metavar=("A", "B"), default=None,
        help="column names (default: the folders' names)",
    )  # fmt: skip


def _solver(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", type=str.lower, choices=choices(Backend), default="lanczos",
        help="eigsh's solver",
    )  # fmt: skip
    p.add_argument(
        "--tol", type=opt.tolerance, default=1e-4,
        help="relative tolerance: ‖Av − λv‖ <= tol · ‖A‖",
    )  # fmt: skip


def _factory_options(p: argparse.ArgumentParser, command: str, k: int, k_help: str) -> None:
    """The options of every command on a factory: --k, --params, --seed, --out, ...."""
    p.add_argument(
        "--params", type=opt.regex, default=None, metavar="REGEX",
        help="analyse only the parameters whose name matches this regular expression, "
        "e.g. 'layer\\.3\\.' (default: all trainable parameters)",
    )  # fmt: skip
    p.add_argument(
        "--micro-batch-size", type=opt.positive_int, default=None, metavar="M",
        help="split every batch into pieces of at most M points in the exact Hessian / GGN "
        "products (same numbers, less memory; KFAC / EKFAC ignore it; default: whole batches)",
    )  # fmt: skip
    if command != "track":
        p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--out", default=default_out(command), help="folder for the results")
    _common(p, k, k_help)


def _common(p: argparse.ArgumentParser, k: int, k_help: str = "number of eigenvalues") -> None:
    p.add_argument("--k", type=opt.positive_int, default=k, help=k_help)
    p.add_argument(
        "--threads", type=opt.positive_int, default=None,
        help="torch's CPU threads (default: 1 for a model below 100,000 parameters, else "
        "torch's default; see benchmarks/RESULTS.md)",
    )  # fmt: skip
    p.add_argument(
        "--device", type=str.lower, choices=("cpu", "cuda"), default=None,
        help="run on this device (default: where the factory's model is)",
    )  # fmt: skip
    p.add_argument(
        "--no-progress", dest="progress", action="store_false",
        help="no progress bars (default: a bar per step on stderr)",
    )  # fmt: skip
    p.add_argument(  # also accepted after the command; SUPPRESS keeps the top-level value
        "--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = f"curvops {args.command}"
    conflict = _conflict(args)
    if conflict:  # a usage error like argparse's own: one line, exit code 2
        print(f"{prog}: error: {conflict} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(2)
    try:
        with command_line_warnings(prog):
            _job(args.command)(args)
    except KeyboardInterrupt:
        print("curvops: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a user's mistake gets one line; --traceback shows the rest
        if args.traceback:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


def _conflict(args: argparse.Namespace) -> str | None:
    """Options that do not go together (checked with the others, before any work)."""
    if args.command == "spectrum" and args.landscape and args.which == "SA":
        return (
            "--landscape slices the loss along the top eigenvectors: use it with --which "
            "LA, LM or BE"
        )
    return None


def _job(command: str) -> Callable[[argparse.Namespace], dict]:
    """The function behind a command (imported late: torch loads only after parsing)."""
    if command == "demo":
        from curvops.cli.demo import run_demo

        return run_demo
    if command == "track":
        from curvops.cli.track import run_track

        return run_track
    if command == "diff":
        from curvops.cli.diff import run_diff

        return run_diff
    from curvops.cli import jobs

    return getattr(jobs, f"run_{command}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
