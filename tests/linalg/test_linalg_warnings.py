"""A convergence warning means something: none when the residual meets the tolerance, and
every one states the residual, the threshold it missed and what to change."""

import warnings

import numpy as np
import pytest
import torch

import curvops
from curvops.linalg.eigsh import ConvergenceWarning

D = np.diag(np.concatenate([np.linspace(1e-3, 2e-3, 40), [3.0, 5.0, 10.0]]))


def test_power_iteration_below_the_float32_floor_converges_without_a_warning():
    """tol=1e-9 is below 50 eps of float32: the floor is the tolerance, as in eigsh."""
    A = torch.diag(torch.linspace(0.1, 4.0, 30, dtype=torch.float32))
    A[-1, -1] = 8.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = curvops.power_iteration(A, k=1, tol=1e-9, max_iter=300)
    assert res.all_converged
    floor = 50 * torch.finfo(torch.float32).eps
    assert res.residual_norms[0] <= 2 * floor * 8.0


def test_eigsh_warning_states_the_residual_the_threshold_and_what_to_change():
    with pytest.warns(ConvergenceWarning) as caught:
        res = curvops.eigsh(D, k=2, which="SA", tol=1e-12, backend="lobpcg", max_iter=2)
    text = str(caught[0].message)
    worst = res.residual_norms[~res.converged].max()
    assert text.startswith("eigsh(backend='lobpcg', which='SA'): 2 of 2 eigenpairs did not ")
    assert f"the largest residual ‖Av − λv‖ = {worst:.3g} > 2·tol·‖A‖ = " in text
    assert "the largest |Ritz value| the solver saw" in text
    assert "Try a larger max_iter (now 2), a larger ncv (now the default)" in text
    assert "pass norm= (e.g. λ_max of a top solve)" in text


def test_a_known_norm_measures_the_tolerance_of_a_bottom_solve():
    """Converged means ‖Av − λv‖ <= 2 tol ‖A‖ with the ‖A‖ given (here the true one)."""
    norm = float(np.abs(np.diag(D)).max())
    res = curvops.eigsh(D, k=2, which="SA", tol=1e-6, backend="lobpcg", norm=norm)
    np.testing.assert_array_equal(res.converged, res.residual_norms <= 2 * 1e-6 * norm)
    assert res.all_converged


def test_arpack_without_any_pair_says_so():
    with pytest.warns(ConvergenceWarning, match="the solver returned none of them to tol"):
        curvops.eigsh(D, k=3, which="SA", tol=1e-14, backend="arpack", max_iter=1, ncv=6)


def test_norm_must_be_a_number():
    with pytest.raises(ValueError, match="norm must be a finite number"):
        curvops.eigsh(D, k=1, norm=float("nan"))


def test_power_iteration_and_eigsh_count_products_on_a_bar(capsys):
    A = np.diag([5.0, 1.0, 0.5, 0.1])
    res = curvops.power_iteration(A, k=1, progress=True)
    err = capsys.readouterr().err
    assert "power_iteration" in err and f"{res.n_matvecs} products" in err.replace("\r", "\n")
    curvops.eigsh(A, k=1, backend="arpack", progress=True)
    assert "eigsh (arpack)" in capsys.readouterr().err
