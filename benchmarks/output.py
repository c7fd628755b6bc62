"""Shared ending of the benchmark scripts: print the table, save the rows, judge them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path


def save_rows(path: Path | None, rows: Sequence) -> None:
    """Write the dataclass rows as JSON (``--json``), if a path is given."""
    if path:
        path.write_text(json.dumps([asdict(r) for r in rows], indent=1))


def finish(
    rows: Sequence,
    args,
    print_table: Callable[[Sequence], None],
    wrong: Callable[[Sequence], list],
    start: float,
) -> int:
    """Table, total time, ``--json``; exit code 1 under ``--check`` when a row is WRONG."""
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    save_rows(args.json, rows)
    return 1 if wrong(rows) and args.check else 0


def rounds_main(doc: str, run, table, rounds: int) -> None:
    """The command line of a run(rounds, quick) -> rows benchmark: --rounds, --quick, --json;
    prints ``table(rows)`` and saves the rows."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = run(args.rounds, args.quick)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
