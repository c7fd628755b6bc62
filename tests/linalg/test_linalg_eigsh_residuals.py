"""eigsh's residual norms without the final matmat (Lanczos relation, LOBPCG's tracked A X)."""

import numpy as np
import pytest
import torch
from linalg_cases import TorchOp, indefinite_spectrum, with_spectrum

from curvops.linalg.eigsh import eigsh

D = with_spectrum(indefinite_spectrum())


class Recording(TorchOp):
    """TorchOp that records the number of columns of every product."""

    def __init__(self, D, dtype):
        super().__init__(D, dtype)
        self.widths = []

    def torch_matmat(self, M):
        self.widths.append(M.shape[1])
        return super().torch_matmat(M)


@pytest.mark.parametrize("backend", ["lanczos", "lobpcg"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_implicit_residuals_match_recomputed(backend, dtype):
    op = Recording(D, dtype)
    res = eigsh(op, k=6, which="LA", tol=1e-4, backend=backend)
    A = op.D.double().numpy()
    explicit = np.linalg.norm(A @ res.eigenvectors - res.eigenvectors * res.eigenvalues, axis=0)
    scale = np.abs(np.linalg.eigvalsh(A)).max()
    np.testing.assert_allclose(res.residual_norms, explicit, atol=2e-5 * scale)
    assert res.all_converged and np.all(explicit <= 2e-4 * scale)
    probe, *widths = op.widths  # the symmetry probe: 2 columns, not in n_matvecs
    assert probe == 2 and sum(widths) == res.n_matvecs
    if backend == "lanczos":  # one column per step, no final k-column matmat
        assert set(widths) == {1}


def test_near_round_off_recomputes():
    """tol within 100 eps of float32: the residuals come from one final matmat."""
    op = Recording(D, torch.float32)
    res = eigsh(op, k=6, which="LA", tol=1e-6, backend="lanczos")
    assert op.widths[-1] == 6 and sum(op.widths[1:]) == res.n_matvecs  # [0]: the probe
