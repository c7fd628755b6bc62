"""Eigenbasis routines: eigh with fallback, QR refresh, sorting with state, refresh of lists."""

import gc
import weakref

import pytest
import torch
from scipy.sparse.linalg import aslinearoperator

from curvops.linalg.eigenbasis import (
    eigh_with_fallback,
    orthogonal_iteration,
    refresh_eigenbasis,
    sort_by_approx_eigenvalues,
)


def _sym(n=6, seed=0, spectrum=None):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    lam = torch.tensor(spectrum, dtype=torch.float64) if spectrum else torch.arange(n, 0, -1.0)
    return Q @ torch.diag(lam.double()) @ Q.T


def _aligned(Q1, Q2):
    """max deviation of |Q1ᵀ Q2| from I (columns equal up to sign)."""
    return float(((Q1.T @ Q2).abs() - torch.eye(Q1.shape[1], dtype=Q1.dtype)).abs().max())


def test_eigh_with_fallback_descending_and_reconstructs():
    A = _sym()
    lam, Q = eigh_with_fallback(A)
    assert torch.all(lam[:-1] >= lam[1:])
    torch.testing.assert_close(Q @ torch.diag(lam) @ Q.T, A)


def test_eigh_with_fallback_accepts_operators():
    A = _sym()
    lam, _ = eigh_with_fallback(aslinearoperator(A.numpy()))
    torch.testing.assert_close(lam, eigh_with_fallback(A)[0])


def test_eigh_with_fallback_survives_float32_failure(monkeypatch):
    A = _sym().float()
    real_eigh = torch.linalg.eigh

    def failing(M, *args, **kwargs):
        if M.dtype == torch.float32:
            raise torch.linalg.LinAlgError("simulated float32 failure")
        return real_eigh(M, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    lam, Q = eigh_with_fallback(A)
    assert lam.dtype == torch.float32 and Q.dtype == torch.float32
    torch.testing.assert_close(lam.double(), torch.arange(6, 0, -1.0, dtype=torch.float64))


def test_a_failed_attempt_frees_its_copies_on_return(monkeypatch):
    """After a float32 failure the copies (the symmetrised matrix, its float64 cast) are
    freed when the call returns, not held in a reference cycle by the failure's traceback
    until the garbage collector runs (on a ResNet's 4608-wide factor: 243 MiB each)."""
    A = _sym().float()
    real_eigh, inputs = torch.linalg.eigh, []

    def failing(M, *args, **kwargs):
        inputs.append(weakref.ref(M))
        if M.dtype == torch.float32:
            raise torch.linalg.LinAlgError("simulated float32 failure")
        return real_eigh(M, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    gc.disable()
    try:
        lam, Q = eigh_with_fallback(A)
        assert len(inputs) == 2 and all(ref() is None for ref in inputs)
    finally:
        gc.enable()
    torch.testing.assert_close(Q @ torch.diag(lam) @ Q.T, A, rtol=1e-5, atol=1e-5)


def test_eigh_with_fallback_refuses_nan():
    A = _sym()
    A[0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        eigh_with_fallback(A)


def test_qr_refresh_converges_to_eigh_basis():
    A = _sym(spectrum=[10.0, 6.0, 3.0, 1.5, 0.7, 0.2])
    _, Q_true = eigh_with_fallback(A)
    g = torch.Generator().manual_seed(3)
    Q0 = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    errs = [_aligned(orthogonal_iteration(A, Q0, steps=s), Q_true) for s in (1, 10, 200)]
    assert errs[2] < 1e-8 and errs[0] > errs[2]
    Q_op = orthogonal_iteration(aslinearoperator(A.numpy()), Q0, steps=200)
    assert _aligned(Q_op, Q_true) < 1e-8


def test_warm_start_from_an_old_basis_converges_fast():
    A = _sym(seed=1)
    _, Q_old = eigh_with_fallback(A)
    A_new = A + 1e-3 * _sym(seed=2)
    _, Q_new = eigh_with_fallback(A_new)
    assert _aligned(orthogonal_iteration(A_new, Q_old, steps=5), Q_new) < 1e-3


def test_sort_by_approx_eigenvalues_keeps_state_aligned():
    A = _sym(spectrum=[5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    _, Q = eigh_with_fallback(A)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    Qp = Q[:, perm]
    vec_state = torch.diagonal(Qp.T @ A @ Qp).clone()  # one value per direction
    mat_state = vec_state.repeat(2, 1)  # per direction along axis 1
    values, Qs, v, m = sort_by_approx_eigenvalues(A, Qp, vec_state, (mat_state, 1))
    torch.testing.assert_close(
        values, torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    )
    torch.testing.assert_close(Qs, Q)
    torch.testing.assert_close(v, values)  # the state still belongs to its direction
    torch.testing.assert_close(m, values.repeat(2, 1))


def test_refresh_eigenbasis_methods():
    As = [_sym(seed=1), _sym(4, seed=2)]
    exact = refresh_eigenbasis(As, method="eigh")
    warm = [Q + 1e-4 * torch.randn_like(Q) for _, Q in exact]
    warm = [torch.linalg.qr(Q)[0] for Q in warm]
    refreshed = refresh_eigenbasis(As, warm, method="qr", steps=50)
    for (lam, Q), (lam_r, Q_r) in zip(exact, refreshed):
        torch.testing.assert_close(lam_r, lam, atol=1e-8, rtol=0)
        assert _aligned(Q_r, Q) < 1e-6
    assert len(refresh_eigenbasis(As, [None, None], method="qr")) == 2
    with pytest.raises(ValueError, match="method"):
        refresh_eigenbasis(As, method="lanczos")
    with pytest.raises(ValueError, match="bases"):
        refresh_eigenbasis(As, [None], method="qr")
