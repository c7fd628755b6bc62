"""Every count, size, tolerance, seed and vector argument of the algorithms is validated,
with an error that names the argument (never a crash deep inside, or a silent NaN)."""

import numpy as np
import pytest
import torch
from linalg_cases import TorchOp, indefinite_spectrum, with_spectrum

from curvops.linalg import (
    block_top_eigenvalues,
    eigsh,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    orthogonal_iteration,
    power_iteration,
    refresh_eigenbasis,
    sort_by_approx_eigenvalues,
    spectral_density,
)

P = 40
S = with_spectrum(indefinite_spectrum(P), seed=4)
NAN, INF = float("nan"), float("inf")
Q0 = torch.linalg.qr(torch.randn(P, 3, generator=torch.Generator().manual_seed(1)).double())[0]


def _blocked(slices, names=None):
    op = TorchOp(S)
    op.block_slices = slices
    if names is not None:
        op.block_names = names
    return op


COUNTS = [  # (function, argument, bad value) for the integer counts and sizes
    *[
        (f, "chunk", bad)
        for f in ("hutchinson_trace", "hutchpp_trace", "hutchinson_diagonal")
        for bad in (-1, 0, 2.5, True)
    ],
    *[
        (f, "n_probes", bad)
        for f in ("hutchinson_trace", "hutchinson_diagonal", "spectral_density")
        for bad in (0, -3, 2.5, "10")
    ],
    *[("hutchpp_trace", "n_matvecs", bad) for bad in (2, 0, 30.0)],
    *[("spectral_density", "lanczos_steps", bad) for bad in (0, 1.5)],
    *[("spectral_density", "n_grid", bad) for bad in (1, 0, 2.5)],
    *[("eigsh", "max_iter", bad) for bad in (0, -1, 2.5)],
    *[("power_iteration", "max_iter", bad) for bad in (0, 2.5)],
    *[("eigsh", "ncv", bad) for bad in (2, 7.5, P + 1)],
    *[("eigsh", "k", bad) for bad in (0, -2, P, 2.5, True)],
    *[("power_iteration", "k", bad) for bad in (0, P + 1, 1.5)],
    *[("orthogonal_iteration", "steps", bad) for bad in (-1, 1.5)],
    *[("refresh_eigenbasis", "steps", bad) for bad in (-1, 1.5)],
]
NUMBERS = [  # real-valued arguments: NaN, inf, negative, wrong type
    *[
        (f, "tol", bad)
        for f in ("eigsh", "power_iteration", "block_top_eigenvalues")
        for bad in (NAN, INF, -1e-3, "1e-6")
    ],
    *[("power_iteration", "momentum", bad) for bad in (NAN, INF, -1.0)],
    *[("spectral_density", "sigma", bad) for bad in (0.0, -1.0, NAN, INF)],
]
SEEDED = (
    "eigsh",
    "power_iteration",
    "spectral_density",
    "hutchinson_trace",
    "hutchpp_trace",
    "hutchinson_diagonal",
)


def _call(name, **kwargs):
    """Run algorithm ``name`` on a symmetric user operator with small defaults."""
    calls = {
        "eigsh": lambda: eigsh(TorchOp(S), **{"k": 2, **kwargs}),
        "power_iteration": lambda: power_iteration(TorchOp(S), **kwargs),
        "spectral_density": lambda: spectral_density(TorchOp(S), **kwargs),
        "hutchinson_trace": lambda: hutchinson_trace(TorchOp(S), **kwargs),
        "hutchpp_trace": lambda: hutchpp_trace(TorchOp(S), **kwargs),
        "hutchinson_diagonal": lambda: hutchinson_diagonal(TorchOp(S), **kwargs),
        "block_top_eigenvalues": lambda: block_top_eigenvalues(
            _blocked([slice(0, 6), slice(6, P)]), **kwargs
        ),
        "orthogonal_iteration": lambda: orthogonal_iteration(TorchOp(S), Q0, **kwargs),
        "refresh_eigenbasis": lambda: refresh_eigenbasis([TorchOp(S)], [Q0], "qr", **kwargs),
    }
    return calls[name]()


@pytest.mark.parametrize("fn,arg,bad", COUNTS, ids=lambda x: repr(x))
def test_counts_are_validated(fn, arg, bad):
    with pytest.raises(ValueError, match=f"{arg} must "):
        _call(fn, **{arg: bad})


@pytest.mark.parametrize("fn,arg,bad", NUMBERS, ids=lambda x: repr(x))
def test_numbers_are_validated(fn, arg, bad):
    with pytest.raises(ValueError, match=f"{arg} must be a finite number"):
        _call(fn, **{arg: bad})


@pytest.mark.parametrize("bad", [1.5, "0", None, True])
@pytest.mark.parametrize("fn", SEEDED)
def test_seed_must_be_an_integer(fn, bad):
    with pytest.raises(TypeError, match="seed must be an integer"):
        _call(fn, seed=bad)


def test_numpy_integer_counts_and_seeds_are_accepted():
    est = hutchinson_trace(TorchOp(S), n_probes=np.int64(4), chunk=np.int32(2), seed=np.int64(3))
    assert est.n_matvecs == 4
    res = eigsh(TorchOp(S), k=np.int64(2), ncv=np.int64(10), max_iter=np.int64(50))
    np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(S)[::-1][:2], rtol=1e-8)


@pytest.mark.parametrize(
    "v0,error,match",
    [
        (np.ones((P, 2)), ValueError, r"v0 has 80 entries \(shape \(40, 2\)\)"),
        (np.ones(P + 1), ValueError, "v0 has 41 entries"),
        (np.ones((2, P // 2)), ValueError, r"v0 has 40 entries \(shape \(2, 20\)\)"),
        (np.full(P, np.nan), ValueError, "v0 must be a finite, nonzero vector"),
        (np.r_[np.inf, np.ones(P - 1)], ValueError, "v0 must be a finite"),
        (np.zeros(P), ValueError, "nonzero"),
        (np.ones(P) * (1 + 1j), TypeError, "v0 is complex"),
    ],
)
@pytest.mark.parametrize("backend", ["arpack", "lanczos", "lobpcg"])
def test_v0_is_validated(backend, v0, error, match):
    with pytest.raises(error, match=match):
        eigsh(TorchOp(S), k=2, backend=backend, v0=v0)


def test_v0_as_a_column_or_a_tensor_is_accepted():
    top = np.linalg.eigh(S)[1][:, -1]
    for v0 in (top[:, None], torch.as_tensor(top)):
        res = eigsh(TorchOp(S), k=1, v0=v0)
        np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(S)[-1:], rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(grid=[0.0, np.nan, 1.0]), "increasing"),
        (dict(grid=[0.0, np.inf]), "finite"),
        (dict(grid=np.ones((2, 3))), "1-D"),
        (dict(grid=[1.0]), "at least 2"),
    ],
)
def test_density_grid_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spectral_density(TorchOp(S), **kwargs)


@pytest.mark.parametrize(
    "slices,names,match",
    [
        ([slice(0, 0)], None, r"block_slices\[0\] = slice\(0, 0, None\) is not a non-empty"),
        ([slice(0, 6), slice(6, P + 5)], None, r"block_slices\[1\].*\[0, P = 40\)"),
        ([slice(0, 6, 2)], None, r"block_slices\[0\]"),
        ([(0, 6)], None, r"block_slices\[0\] = \(0, 6\)"),
        ([slice(0, 6), slice(6, P)], ["only one"], "1 block_names for 2 block_slices"),
    ],
)
def test_block_slices_are_validated(slices, names, match):
    with pytest.raises(ValueError, match=match):
        block_top_eigenvalues(_blocked(slices, names))


def test_block_backend_is_validated_even_for_small_blocks():
    with pytest.raises(ValueError, match="backend must be one of"):
        block_top_eigenvalues(_blocked([slice(0, 6)]), backend="magma")


@pytest.mark.parametrize(
    "Q,match",
    [
        (torch.ones(P + 1, 2, dtype=torch.float64), "n = 40"),
        (torch.ones(P, P + 1, dtype=torch.float64), "m <= n"),
        (torch.ones(P, dtype=torch.float64), r"got \(40,\)"),
        (np.ones((P, 2)), "got ndarray"),
        (torch.full((P, 2), float("nan"), dtype=torch.float64), "finite"),
    ],
)
@pytest.mark.parametrize("fn", ["orthogonal_iteration", "sort", "refresh"])
def test_eigenbasis_q_is_validated(fn, Q, match):
    run = {
        "orthogonal_iteration": lambda A: orthogonal_iteration(A, Q),
        "sort": lambda A: sort_by_approx_eigenvalues(A, Q),
        "refresh": lambda A: refresh_eigenbasis([A], [Q], method="qr"),
    }[fn]
    for A in (torch.as_tensor(S), TorchOp(S)):
        with pytest.raises(ValueError, match=match):
            run(A)
