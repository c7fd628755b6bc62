"""Shared fixtures: the device matrix (CPU always, CUDA when present) and float64 defaults."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))  # oracles, models, cases

torch.set_num_threads(1)  # tiny models: one thread is faster and steadier on a shared 2-core box

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


try:  # Hypothesis budgets: "dev" locally, "ci" when CI=true (kept inside the make test limit)
    import os

    from hypothesis import HealthCheck, settings

    _common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
    settings.register_profile("dev", max_examples=20, **_common)
    settings.register_profile("ci", max_examples=30, derandomize=True, print_blob=True, **_common)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover - dev extra
    pass
