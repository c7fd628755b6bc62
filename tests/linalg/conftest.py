"""linalg tests: one torch thread while they run (restored after).

The linalg tests multiply small matrices; with 2 OpenMP threads on a loaded 2-core
machine each tiny torch op can wait for the busy core, which made this directory 30x
slower (26 s instead of 1 s for test_linalg_eigsh.py). Module-scoped fixtures run
before this one: they use ``linalg_cases.one_torch_thread`` themselves.
"""

import pytest
from linalg_cases import one_torch_thread


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield
