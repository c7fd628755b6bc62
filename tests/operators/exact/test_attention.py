"""Attention through F.scaled_dot_product_attention: second derivatives via the math kernel."""

import pytest
import torch
import torch.nn.functional as F
from oracles import dense_ggn, dense_hessian
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import curvops


class TinyAttention(nn.Module):
    """(B, S, D) -> causal self-attention -> (B, C, S) logits."""

    def __init__(self, d=4, classes=3):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        return self.head(h).transpose(1, 2)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = TinyAttention().double()
    data = [
        (torch.randn(B, 5, 4, dtype=torch.float64), torch.randint(0, 3, (B, 5))) for B in (3, 2)
    ]
    return model, nn.CrossEntropyLoss(), data


def test_hessian_and_ggn_through_attention(problem):
    model, loss_fn, data = problem
    with sdpa_kernel(SDPBackend.MATH):  # the ground truth needs second derivatives too
        H, G = dense_hessian(model, loss_fn, data), dense_ggn(model, loss_fn, data)
    torch.testing.assert_close(curvops.HessianOperator(model, loss_fn, data).to_dense(), H)
    torch.testing.assert_close(curvops.GGNOperator(model, loss_fn, data).to_dense(), G)


def test_fused_kernel_has_no_second_derivative_on_cpu(problem):
    """Why math_attention defaults to True: the fused CPU kernel cannot be differentiated twice."""
    op = curvops.HessianOperator(*problem, math_attention=False)
    with pytest.raises(ValueError, match="no second derivative for .*math_attention=True"):
        op @ torch.ones(op.shape[0], dtype=torch.float64).numpy()
