"""The ``curvops`` command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curvops", description="Curvature of PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train small nets on digits and analyse their curvature")
    demo.add_argument("--out", default="demo_output", help="folder for results.json and figures")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--k", type=int, default=10, help="number of top eigenvalues")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from curvops.report import run_demo

            run_demo(args.out, device=args.device, k=args.k)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"curvops {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
