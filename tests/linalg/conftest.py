"""linalg tests: one torch thread while they run (restored after).

The linalg tests multiply small matrices; with 2 OpenMP threads on a loaded 2-core
machine each tiny torch op can wait for the busy core, which made this directory 30x
slower (26 s instead of 1 s for test_linalg_eigsh.py).
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
