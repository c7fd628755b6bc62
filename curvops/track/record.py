"""One measurement of the curvature during training: a JSON-ready ``CurvatureRecord``, and its log."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class CurvatureRecord:
    """The curvature at one training step.

    ``eigenvalues`` (k,) in the solver's order (descending); ``residual_norms`` (k,)
    ‖A v_i − λ_i v_i‖; ``converged`` (k,); ``n_matvecs`` all products of this measurement
    (``matvecs``: per part, e.g. "eigsh", "trace", "layers"); ``seconds`` its wall time;
    ``warm`` whether the eigensolver started from the previous Ritz vectors.
    ``subspace_cosines`` (k,): cosines of the principal angles between this and the
    previous top-k eigenspace (None at the first measurement). ``gradient_fraction``:
    ‖Vᵀ g‖ / ‖g‖, the share of the probe gradient's norm in the top-k eigenspace V.
    ``lr`` and ``two_over_lr`` (2/η, gradient descent's stability threshold for λ_max) when
    the optimizer is known. ``layer_*``: per block λ_max(A_bb), the score |λ_b| / max_c |λ_c|
    and convergence. ``approximations``: per name (e.g. "KFAC") the ``compare`` metrics.
    Undefined numbers (NaN) are written as JSON null and read back as NaN.
    """

    step: int
    eigenvalues: list[float]
    residual_norms: list[float]
    converged: list[bool]
    n_matvecs: int
    seconds: float
    curvature: str = "hessian"
    which: str = "LA"
    tol: float = 1e-4
    warm: bool = False
    method: str = "lanczos"
    matvecs: dict[str, int] = field(default_factory=dict)
    trace: float | None = None
    trace_stderr: float | None = None
    trace_method: str | None = None
    layer_names: list[str] | None = None
    layer_eigenvalues: list[float] | None = None
    layer_scores: list[float] | None = None
    layer_converged: list[bool] | None = None
    subspace_cosines: list[float] | None = None
    gradient_norm: float | None = None
    gradient_fraction: float | None = None
    lr: float | None = None
    two_over_lr: float | None = None
    approximations: dict[str, dict[str, Any]] | None = None

    @property
    def sharpness(self) -> float:
        """λ_1, the first eigenvalue (the largest for which="LA")."""
        return float(self.eigenvalues[0]) if self.eigenvalues else math.nan

    @property
    def all_converged(self) -> bool:
        return bool(all(self.converged))

    @property
    def principal_angles(self) -> np.ndarray | None:
        """Angles (radians, (k,)) between this and the previous top-k eigenspace."""
        if self.subspace_cosines is None:
            return None
        return np.arccos(np.clip(np.asarray(self.subspace_cosines, dtype=float), -1.0, 1.0))

    @property
    def drift(self) -> float:
        """1 − ‖U_prevᵀ U‖_F² / k in [0, 1]: the share of the top-k eigenspace that moved."""
        if not self.subspace_cosines:
            return math.nan
        return float(1.0 - np.mean(np.square(self.subspace_cosines)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (plain lists and numbers; NaN and inf become None)."""
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurvatureRecord:
        """The inverse of ``to_dict`` (None inside float lists back to NaN); unknown keys
        are refused with a ValueError naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown CurvatureRecord fields: {', '.join(unknown)}")
        out = dict(d)
        for key in FLOAT_LISTS:
            if out.get(key) is not None:
                out[key] = [math.nan if v is None else float(v) for v in out[key]]
        return cls(**out)

    def to_json(self) -> str:
        """One line of strict JSON."""
        return json.dumps(self.to_dict(), allow_nan=False)


FLOAT_LISTS = (
    "eigenvalues",
    "residual_norms",
    "layer_eigenvalues",
    "layer_scores",
    "subspace_cosines",
)


def _clean(obj):
    """numpy -> Python, NaN / inf -> None, recursively."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_record(path: str | Path, record: CurvatureRecord) -> None:
    """Append ``record`` to the JSON-lines file ``path`` (one line, flushed)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(record.to_json() + "\n")


def load_records(path: str | Path) -> list[CurvatureRecord]:
    """The records of a JSON-lines log, in order (blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [CurvatureRecord.from_dict(json.loads(line)) for line in lines if line.strip()]
