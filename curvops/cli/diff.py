"""`curvops diff A B`: two saved report folders side by side (``curvops.diff_reports``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curvops.report import Report, diff_reports


def run_diff(args: Any) -> dict:
    """Load both reports (a missing folder or report.json is one error line) and print
    the diff table; labels default to the folder names."""
    reports = [_load(Path(folder)) for folder in (args.a, args.b)]
    labels = tuple(args.labels) if args.labels else _labels(args.a, args.b)
    diff = diff_reports(reports[0], reports[1], labels=labels)
    print(diff.table())
    return diff.to_dict()


def _load(folder: Path) -> Report:
    if not folder.is_dir():
        raise ValueError(f"no such folder: {folder} (give two folders that report.save() wrote)")
    if not (folder / "report.json").is_file():
        raise ValueError(
            f"{folder} holds no report.json: give a folder written by `curvops spectrum`, "
            "`curvops compare` or report.save()"
        )
    return Report.load(folder)


def _labels(a: str, b: str) -> tuple[str, str]:
    """The folders' names, or their paths when the names are the same."""
    names = (Path(a).name or a, Path(b).name or b)
    return names if names[0] != names[1] else (a, b)
