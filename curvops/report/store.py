"""A report on disk: report.json (strict JSON), eigenvectors.npz, report.png."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from curvops.core.records import decode

REPORT, VECTORS, FIGURE = "report.json", "eigenvectors.npz", "report.png"
LANDSCAPE = "landscape.png"
PAIRS = ("top", "bottom")


def save(report: Any, directory: Path, vectors: bool = True, figure: bool = True) -> Path:
    """Write ``report`` into ``directory``; a file this save does not write is removed (a
    stale one would belong to another report). NaN / inf are written as null."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False)
    (directory / REPORT).write_text(text + "\n")
    arrays = _eigenvectors(report) if vectors else {}
    _remove(directory / VECTORS)
    if arrays:
        np.savez_compressed(directory / VECTORS, **arrays)  # type: ignore[arg-type]
    for name in (FIGURE, LANDSCAPE):
        _remove(directory / name)
    if figure:
        _figure(report.plot, directory / FIGURE)
    if figure and report.landscapes:
        _figure(report.plot_landscapes, directory / LANDSCAPE)
    return directory


def load(cls: type, directory: Path) -> Any:
    """The ``cls`` (Report) saved in ``directory``, eigenvectors from eigenvectors.npz."""
    path = directory / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"no {REPORT} in {directory}: save a report with report.save()")
    data = json.loads(path.read_text())
    if data.get("format") != "curvops-report":
        raise ValueError(f"{path} is not a curvops report (its 'format' is {data.get('format')!r})")
    for key in PAIRS:
        if data.get(key) is not None:
            data[key]["eigenvectors"] = []
    report = decode(cls, data)
    stored = _read_vectors(directory / VECTORS)
    for key in PAIRS:
        result = getattr(report, key)
        if result is not None:
            empty = np.zeros((0, len(result.eigenvalues)))
            result.eigenvectors = stored.get(key, empty)
    return report


def _eigenvectors(report: Any) -> dict[str, np.ndarray]:
    pairs = {key: getattr(report, key) for key in PAIRS}
    return {k: r.eigenvectors for k, r in pairs.items() if r is not None and r.eigenvectors.size}


def _read_vectors(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def _remove(path: Path) -> None:
    if path.is_file():
        path.unlink()


def _figure(draw: Any, path: Path) -> None:
    try:
        draw(path)
    except ImportError as err:  # the plot extra is optional
        warnings.warn(
            f"{path.name} not written: {err}; or save(figure=False) to write the numbers only",
            RuntimeWarning,
            stacklevel=3,
        )
