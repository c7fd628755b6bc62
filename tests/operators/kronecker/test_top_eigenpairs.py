"""KFAC / EKFAC top eigenpairs in closed form (no products) against the dense matrix's eigh."""

from __future__ import annotations

import pytest
import torch
from kfac_models import make
from whole_models import WHOLE_MODELS

from curvops.operators.kronecker.ekfac import EKFACOperator
from curvops.operators.kronecker.kfac import KFACOperator


def _check(op, k: int) -> None:
    dense = op.to_dense().double()
    values, U = op.top_eigenpairs(k)
    truth = torch.linalg.eigvalsh(dense).flip(0)[:k]
    torch.testing.assert_close(values.double(), truth, rtol=1e-8, atol=1e-10 * float(truth[0]))
    U = U.double()
    torch.testing.assert_close(U.T @ U, torch.eye(k, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(dense @ U, U * values.double(), atol=1e-8 * float(truth[0]), rtol=0)


@pytest.mark.parametrize("cls", [KFACOperator, EKFACOperator])
@pytest.mark.parametrize("name", ["mlp", "cnn", "mix"])
def test_closed_form_top_eigenpairs_equal_dense_eigh(cls, name):
    model, loss_fn, data = make(name, "ce")
    _check(cls(model, loss_fn, data), k=5)


@pytest.mark.parametrize("cls", [KFACOperator, EKFACOperator])
@pytest.mark.parametrize("name", ["bert", "gpt2", "resnet", "text_cnn"])
def test_closed_form_on_whole_models(cls, name):
    """Embeddings (a diagonal A), grouped / depthwise convolutions, fallback blocks."""
    model, loss_fn, data = WHOLE_MODELS[name]()
    _check(cls(model, loss_fn, data), k=4)


def test_k_is_checked():
    model, loss_fn, data = make("mlp", "ce")
    op = KFACOperator(model, loss_fn, data)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        op.top_eigenpairs(0)
    with pytest.raises(ValueError, match="k must be <= P"):
        op.top_eigenpairs(op.shape[0] + 1)
