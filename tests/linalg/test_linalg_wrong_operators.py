"""Every algorithm on wrong operators: non-symmetric, complex, NaN / inf products, bad shapes.

Each is refused with a clear error (type and message checked), never a silent wrong number;
symmetric user operators still work, with the symmetry probe invisible in results and counts.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch
from linalg_cases import TorchOp, indefinite_spectrum, with_spectrum

from curvops.core.errors import NotSymmetricError
from curvops.interface import SymmetricTorchOperator, TorchMatmat, torch_matmat
from curvops.linalg import (
    block_top_eigenvalues,
    eigh_with_fallback,
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
S = with_spectrum(indefinite_spectrum(P), seed=4)  # symmetric, eigenvalues 30 .. -20
N = np.random.default_rng(7).standard_normal((P, P))  # not symmetric
H = S + 1j * (N - N.T)  # Hermitian: complex
Q0 = torch.linalg.qr(torch.randn(P, 3, generator=torch.Generator().manual_seed(1)).double())[0]
SLICES = [slice(0, 6), slice(6, P)]  # a dense block (<= 32) and an iterative one

ALGORITHMS = {  # name -> (run(op), the label its errors name)
    "eigsh-arpack": (lambda op: eigsh(op, k=2, backend="arpack"), "eigsh, backend 'arpack'"),
    "eigsh-lanczos": (lambda op: eigsh(op, k=2, backend="lanczos"), "eigsh, backend 'lanczos'"),
    "eigsh-lobpcg": (lambda op: eigsh(op, k=2, backend="lobpcg"), "eigsh, backend 'lobpcg'"),
    "power_iteration": (lambda op: power_iteration(op, k=1, max_iter=30), "power_iteration"),
    "spectral_density": (
        lambda op: spectral_density(op, n_probes=2, lanczos_steps=8),
        "spectral_density",
    ),
    "hutchinson_trace": (lambda op: hutchinson_trace(op, n_probes=4, chunk=2), "hutchinson_trace"),
    "hutchpp_trace": (lambda op: hutchpp_trace(op, n_matvecs=6, chunk=2), "hutchpp_trace"),
    "hutchinson_diagonal": (
        lambda op: hutchinson_diagonal(op, n_probes=4, chunk=2),
        "hutchinson_diagonal",
    ),
    "block_top_eigenvalues": (
        lambda op: block_top_eigenvalues(_with_blocks(op)),
        "block_top_eigenvalues",
    ),
    "orthogonal_iteration": (
        lambda op: orthogonal_iteration(op, Q0, steps=2),
        "orthogonal_iteration",
    ),
    "sort_by_approx_eigenvalues": (
        lambda op: sort_by_approx_eigenvalues(op, Q0),
        "sort_by_approx_eigenvalues",
    ),
    "refresh_eigenbasis-qr": (
        lambda op: refresh_eigenbasis([op], [Q0], method="qr"),
        "refresh_eigenbasis",
    ),
    "refresh_eigenbasis-eigh": (
        lambda op: refresh_eigenbasis([op], method="eigh"),
        "refresh_eigenbasis",
    ),
    "eigh_with_fallback": (lambda op: eigh_with_fallback(op), "eigh_with_fallback"),
}


def _with_blocks(op):
    op.block_slices = SLICES
    return op


def _custom(D, dtype=None):
    """A LinearOperator with a custom matvec / matmat (no dense matrix behind it for curvops)."""
    return sla.LinearOperator(
        D.shape, matvec=lambda x: D @ x, matmat=lambda X: D @ X, dtype=dtype or D.dtype
    )


def _torch_matmat(D):
    T = torch.as_tensor(D)
    return TorchMatmat(lambda M: T @ M, D.shape[0], torch.device("cpu"), T.dtype)


KINDS = {  # how a user hands over an operator
    "aslinearoperator": sla.aslinearoperator,
    "custom_matvec": _custom,
    "torch_matmat_class": TorchOp,
    "TorchMatmat": _torch_matmat,
    "numpy": lambda D: D,
    "torch": torch.as_tensor,
    "sparse": sp.csr_matrix,
}
NO_ATTRIBUTES = ("numpy", "torch", "sparse", "vector")  # block_slices cannot be attached


def _cases(kinds):
    return [
        pytest.param(alg, kind, id=f"{alg}-{kind}")
        for alg in ALGORITHMS
        for kind in kinds
        if not (alg == "block_top_eigenvalues" and kind in NO_ATTRIBUTES)
    ]


# ------------------------------------------------------------------------- symmetry


@pytest.mark.parametrize("alg,kind", _cases(KINDS))
def test_non_symmetric_operator_is_refused(alg, kind):
    run, _ = ALGORITHMS[alg]
    with pytest.raises(NotSymmetricError, match=r"not symmetric[\s\S]*\(A \+ Aᵀ\)/2"):
        run(KINDS[kind](N))


@pytest.mark.parametrize("backend", ["arpack", "lanczos", "lobpcg"])
def test_eigsh_on_the_example_of_the_bug_raises(backend):
    """Before the probe, Lanczos reported residuals ~1e5 times too small on this operator."""
    A = sla.aslinearoperator(np.random.default_rng(0).standard_normal((50, 50)))
    with pytest.raises(NotSymmetricError, match=f"eigsh, backend '{backend}' assumes a real"):
        eigsh(A, k=3, backend=backend)
    assert issubclass(NotSymmetricError, ValueError)


def test_a_small_asymmetry_is_refused_round_off_is_not():
    tiny = (N - N.T) / np.abs(N - N.T).max()  # antisymmetric, max entry 1
    with pytest.raises(NotSymmetricError, match="uᵀ\\(A v\\) − vᵀ\\(A u\\)"):
        eigsh(_custom(S + 1e-9 * tiny), k=2)
    res = eigsh(_custom(S + 1e-15 * tiny), k=2)  # round-off of a float64 product
    np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(S)[::-1][:2], rtol=1e-10)
    with pytest.raises(NotSymmetricError, match="max \\|A − Aᵀ\\|"):  # dense: checked directly
        eigsh(S + 1e-9 * tiny, k=2)
    eigsh(S + 1e-15 * tiny, k=2)


def test_float32_round_off_of_a_gram_product_passes():
    """X^T (X v) in float32 is symmetric only to round-off: the probe must accept it."""
    X = torch.as_tensor(np.random.default_rng(3).standard_normal((300, P)), dtype=torch.float32)
    op = sla.LinearOperator(
        (P, P), matvec=lambda v: (X.T @ (X @ torch.as_tensor(v))).numpy(), dtype=np.float32
    )
    res = eigsh(op, k=2, tol=1e-4)
    exact = np.linalg.eigvalsh(X.double().T @ X.double())[::-1][:2]
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-4)
    gram = (X.T @ X).numpy()  # a float32 gemm: not exactly symmetric either
    np.testing.assert_allclose(eigsh(gram, k=2, tol=1e-4).eigenvalues, exact, rtol=1e-4)


def test_non_symmetric_large_block_is_refused_by_the_probe():
    D = S.copy()
    D[10, 30] += 1.0  # inside the iterative block only
    with pytest.raises(NotSymmetricError, match="block_top_eigenvalues, block '1'"):
        block_top_eigenvalues(_with_blocks(TorchOp(D)))


def test_curvops_operators_are_not_probed():
    """A SymmetricTorchOperator is trusted: no probe product, the counts are the products."""
    op = _Recording(S)
    res = eigsh(op, k=2, backend="lanczos")
    assert set(op.widths) == {1} and sum(op.widths) == res.n_matvecs
    op.widths.clear()
    est = hutchinson_trace(op, n_probes=8, chunk=4)
    assert op.widths == [4, 4] and est.n_matvecs == 8
    wrong = _Recording(N)  # not symmetric, but declared so: not probed (by construction)
    hutchinson_trace(wrong, n_probes=2, chunk=2)
    assert wrong.widths == [2]


def test_the_probe_is_one_uncounted_product_of_two_columns():
    op = _RecordingDuck(S)
    est = hutchinson_trace(op, n_probes=8, chunk=4)
    assert op.widths == [2, 4, 4] and est.n_matvecs == 8
    dense = torch_matmat(S)  # a dense matrix: compared with its transpose, no product
    assert dense.symmetric and dense.n_calls == 0


def test_a_torch_matmat_is_probed_once():
    A = _torch_matmat(S)
    eigsh(A, k=2)
    calls = A.n_calls
    assert A.symmetric and A.n_matvecs == calls - 1  # the first call was the probe
    eigsh(A, k=2)
    assert A.n_matvecs == A.n_calls - 1


@pytest.mark.parametrize("alg", list(ALGORITHMS))
def test_probe_changes_no_result_and_no_count(alg):
    """The same results and n_matvecs for a probed user operator and a trusted curvops one."""
    run, _ = ALGORITHMS[alg]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. power iteration's ConvergenceWarning
        probed, trusted = run(TorchOp(S)), run(_Recording(S))
    for a, b in zip(_leaves(probed), _leaves(trusted)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["arpack", "lanczos", "lobpcg"])
@pytest.mark.parametrize("kind", ["aslinearoperator", "custom_matvec", "torch_matmat_class"])
def test_reported_residuals_hold_for_a_symmetric_user_operator(backend, kind):
    """The implicit residuals (Lanczos relation, LOBPCG's A X) match ‖A v − λ v‖ recomputed."""
    res = eigsh(KINDS[kind](S), k=4, which="BE", backend=backend)
    V = res.eigenvectors
    explicit = np.linalg.norm(S @ V - V * res.eigenvalues, axis=0)
    np.testing.assert_allclose(res.residual_norms, explicit, rtol=1e-6, atol=1e-12 * 30)
    exact = np.linalg.eigvalsh(S)
    np.testing.assert_allclose(res.eigenvalues, [*exact[-2:][::-1], *exact[:2][::-1]], rtol=1e-8)
    assert res.all_converged


# -------------------------------------------------------------------------- complex


def _complex_kinds():
    class ComplexDtype(TorchOp):  # declares a complex torch dtype
        torch_dtype = torch.complex128

    class ComplexProducts(TorchOp):  # declares float64, returns complex values
        def torch_matmat(self, M):
            return torch.as_tensor(H) @ M.to(torch.complex128)

    return {
        "aslinearoperator": lambda: sla.aslinearoperator(H),
        "custom_complex_dtype": lambda: _custom(H),
        "custom_real_dtype_complex_products": lambda: _custom(H, dtype=np.float64),
        "numpy": lambda: H,
        "torch": lambda: torch.as_tensor(H),
        "sparse": lambda: sp.csr_matrix(H),
        "torch_dtype_complex": lambda: ComplexDtype(S),
        "torch_products_complex": lambda: ComplexProducts(S),
    }


COMPLEX = _complex_kinds()


@pytest.mark.parametrize("alg,kind", _cases(COMPLEX))
def test_complex_operator_is_refused(alg, kind):
    run, _ = ALGORITHMS[alg]
    with pytest.raises(TypeError, match="complex"):
        run(COMPLEX[kind]())


# ----------------------------------------------------------------------- NaN / inf


class _NanAt(TorchOp):
    """S whose ``at``-th product (1-based; None: none) returns ``value`` in its last column."""

    def __init__(self, at=None, value=np.nan):
        super().__init__(S)
        self.at, self.value, self.calls = at, value, 0

    def torch_matmat(self, M):
        self.calls += 1
        out = super().torch_matmat(M)
        if self.calls == self.at:
            out[:, -1] = self.value
        return out


class _NanAtLinearOperator(sla.LinearOperator):
    """The same as a scipy LinearOperator with a custom matmat."""

    def __init__(self, at=None, value=np.nan):
        super().__init__(np.float64, S.shape)
        self.at, self.value, self.calls = at, value, 0

    def _matmat(self, X):
        self.calls += 1
        out = S @ X
        if self.calls == self.at:
            out[:, -1] = self.value
        return out

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1)).ravel()


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["first", "third", "last"])
@pytest.mark.parametrize("cls", [_NanAt, _NanAtLinearOperator])
@pytest.mark.parametrize("alg", [a for a in ALGORITHMS if a != "block_top_eigenvalues"])
def test_nan_or_inf_in_any_product_raises_naming_it(alg, cls, where, value):
    run, label = ALGORITHMS[alg]
    clean = cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(clean)
    at = {"first": 1, "third": min(3, clean.calls), "last": clean.calls}[where]
    dense_route = alg in ("eigh_with_fallback", "refresh_eigenbasis-eigh")  # A I, no probe
    note = "the symmetry probe, " if at == 1 and not dense_route else ""
    match = rf"NaN or inf in product {at} of the operator \({note}{label}"
    with pytest.raises(FloatingPointError, match=match):
        run(cls(at, value))


@pytest.mark.parametrize("where,bad", [(1, 0), ("last", 1)])
def test_non_finite_block_gets_its_status_and_a_warning(where, bad):
    clean = _NanAt()
    block_top_eigenvalues(_with_blocks(clean))
    at = clean.calls if where == "last" else where
    with pytest.warns(RuntimeWarning, match=f"block '{bad}'.*NaN or inf in product"):
        res = block_top_eigenvalues(_with_blocks(_NanAt(at)))
    assert res.statuses[bad] == "non-finite" and np.isnan(res.scores[bad])
    assert res.statuses[1 - bad] == "ok" and np.isfinite(res.eigenvalues[1 - bad])


@pytest.mark.parametrize("make", [lambda D: D, torch.as_tensor, sp.csr_matrix])
def test_non_finite_dense_matrix_is_refused_up_front(make):
    D = S.copy()
    D[2, 5] = np.inf
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        hutchinson_trace(make(D))


# --------------------------------------------------------------------------- shapes


class _BadShape(TorchOp):
    def torch_matmat(self, M):
        return super().torch_matmat(M)[:-1]


class _ReturnsNumpy(TorchOp):
    def torch_matmat(self, M):
        return super().torch_matmat(M).numpy()


def _non_square_kinds():
    rect = np.ones((3, 4))
    duck = TorchOp(np.ones((4, 4)))
    duck.shape = (3, 4)
    return {
        "numpy": lambda: rect,
        "torch": lambda: torch.as_tensor(rect),
        "aslinearoperator": lambda: sla.aslinearoperator(rect),
        "torch_matmat_class": lambda: duck,
        "vector": lambda: np.ones(4),
    }


NON_SQUARE = _non_square_kinds()


@pytest.mark.parametrize("alg,kind", _cases(NON_SQUARE))
def test_non_square_operator_is_refused(alg, kind):
    run, _ = ALGORITHMS[alg]
    with pytest.raises(ValueError, match="square"):
        run(NON_SQUARE[kind]())


@pytest.mark.parametrize("alg", list(ALGORITHMS))
def test_empty_operator_is_refused(alg):
    run, _ = ALGORITHMS[alg]
    with pytest.raises(ValueError, match=r"the operator is empty \(shape \(0, 0\)\)"):
        run(sla.aslinearoperator(np.zeros((0, 0))))


@pytest.mark.parametrize("backend", ["arpack", "lanczos", "lobpcg"])
@pytest.mark.parametrize("size", [1, 2])
def test_k_at_least_p_is_refused(backend, size):
    with pytest.raises(ValueError, match=f"0 < k < P = {size}.*numpy.linalg.eigh"):
        eigsh(np.eye(size), k=size, backend=backend)


def test_power_iteration_on_p_1():
    res = power_iteration(np.array([[-3.0]]), k=1)
    np.testing.assert_allclose(res.eigenvalues, [-3.0])
    with pytest.raises(ValueError, match="0 < k <= P = 1"):
        power_iteration(np.array([[-3.0]]), k=2)


@pytest.mark.parametrize(
    "cls,error,match",
    [
        (_BadShape, ValueError, r"shape \(39, 2\), expected \(40, 2\)"),
        (_ReturnsNumpy, TypeError, "ndarray"),
    ],
)
def test_a_product_of_the_wrong_shape_or_type_is_refused(cls, error, match):
    with pytest.raises(error, match=match):
        eigsh(cls(S), k=2)


# -------------------------------------------------------------------------- helpers


class _Recording(SymmetricTorchOperator):
    """A minimal curvops-style operator (symmetric by construction) recording its widths."""

    def __init__(self, D):
        self.D = torch.as_tensor(D, dtype=torch.float64)
        self.device, self.torch_dtype, self.widths = torch.device("cpu"), torch.float64, []
        super().__init__(dtype=np.float64, shape=self.D.shape)

    def torch_matmat(self, M):
        self.widths.append(M.shape[1])
        return self.D @ M


class _RecordingDuck(TorchOp):
    def __init__(self, D):
        super().__init__(D)
        self.widths = []

    def torch_matmat(self, M):
        self.widths.append(M.shape[1])
        return super().torch_matmat(M)


def _leaves(result):
    """The numbers of a result (dataclass, tuple / list of tensors), for exact comparison."""
    if isinstance(result, (list, tuple)):
        return [x for r in result for x in _leaves(r)]
    if isinstance(result, torch.Tensor):
        return [result.numpy()]
    fields = vars(result)
    return [np.asarray(v) for k, v in fields.items() if k != "seconds"]
