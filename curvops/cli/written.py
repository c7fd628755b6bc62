"""The files a command writes: results.json (strict JSON) and the line that lists them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_results(out: Path, results: dict) -> Path:
    """results.json, strict JSON: a NaN or inf (an undefined number) is written as null."""
    path = out / "results.json"
    path.write_text(json.dumps(_finite(results), indent=2, allow_nan=False) + "\n")
    return path


def written(files: Sequence[Path]) -> None:
    """One line on stdout: the folder and the files written there."""
    if files:
        folder = files[0].parent
        print(f"wrote {folder}/: {', '.join(f.name for f in files)}", flush=True)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj
