"""Training-loop integrations of ``curvops.CurvatureTracker`` (optional extras, imported lazily).

- ``CurvatureTrainerCallback``: a Hugging Face ``transformers.TrainerCallback`` (extra "hf").
- ``CurvatureLightningCallback``: a PyTorch Lightning ``Callback`` (extra "lightning";
  ``lightning`` or ``pytorch_lightning``).

This package imports without either library; a callback's library is imported when the
callback is first accessed, and a missing one is an ImportError saying what to install.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CurvatureTrainerCallback": "curvops.integrations.transformers_callback",
    "CurvatureLightningCallback": "curvops.integrations.lightning_callback",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'curvops.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
