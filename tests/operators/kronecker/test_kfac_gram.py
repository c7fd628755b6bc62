"""kfac.gram: Xᵀ X from the upper column blocks, equal to the plain product."""

import pytest
import torch

from curvops.operators.kronecker.kfac import gram


@pytest.mark.parametrize("n,dim", [(7, 3), (40, 511), (33, 512), (9, 515), (600, 1030)])
def test_gram_equals_plain_product(n, dim):
    X = torch.randn(n, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    G = gram(X)
    torch.testing.assert_close(G, X.T @ X, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(G, G.T, rtol=1e-12, atol=1e-12)


def test_gram_of_a_strided_view():
    X = torch.randn(64, 1200, dtype=torch.float64)[:, ::2]  # (64, 600), non-contiguous
    torch.testing.assert_close(gram(X), X.T @ X, rtol=1e-12, atol=1e-12)
