"""Caches follow everything the function depends on (curvops.core.watch.ModelWatch).

The Hessian and GGN keep per-batch graphs between products; KFAC / EKFAC keep factors.
After any change of what the model computes — a plain module attribute, a replaced
submodule, a registered or removed hook, a train/eval switch, parameters and buffers — a
Hessian / GGN product equals the dense float64 truth of the changed model, and a Kronecker
operator built with on_stale="raise" refuses (with "recompute": equals a fresh one).
"""

from __future__ import annotations

import re

import pytest
import torch
from oracles import dense_ggn, dense_hessian
from torch import nn

import curvops
from curvops.core.watch import ModelWatch


class Tempered(nn.Sequential):
    """logits / T with a plain attribute T, and a mode-dependent (deterministic) branch."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
        self.T = 1.0

    def forward(self, x):
        out = super().forward(x) / self.T
        return out if self.training else out * 1.5


def _problem():
    torch.manual_seed(0)
    model = Tempered().double().eval()
    gen = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(n, 3, generator=gen, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=gen),
        )
        for n in (4, 3)
    ]
    return model, nn.CrossEntropyLoss(), data


def _scale_output(module, args, output):
    return output * 2.0


CHANGES = {
    "attribute": lambda m: setattr(m, "T", 3.0),
    "submodule": lambda m: m.__setitem__(1, nn.Sigmoid()),
    "hook": lambda m: m[2].register_forward_hook(_scale_output),
    "pre-hook": lambda m: m[0].register_forward_pre_hook(lambda mod, args: (args[0] * 0.5,)),
    "mode": lambda m: m.train(),  # Tempered has no dropout: train mode is deterministic
    "parameter via .data": lambda m: m[0].weight.data.mul_(-1.0),  # sign flip: same norms
    "parameter replaced": lambda m: setattr(m[2], "bias", nn.Parameter(m[2].bias.detach() + 1)),
    "tensor attribute": lambda m: setattr(m, "offset", torch.ones(4, dtype=torch.float64)),
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_exact_operators_follow_every_change(kind, change):
    model, loss_fn, data = _problem()
    cls, dense = {
        "hessian": (curvops.HessianOperator, dense_hessian),
        "ggn": (curvops.GGNOperator, dense_ggn),
    }[kind]
    op = cls(model, loss_fn, data)
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    op.torch_matmat(V)  # fills the graph cache
    with torch.no_grad():
        CHANGES[change](model)
    params = [p for p in model.parameters() if p.requires_grad]
    if change == "parameter replaced":  # products would differentiate an unused tensor
        with pytest.raises(curvops.StaleOperatorError, match="'2.bias'.*no longer a parameter"):
            op.torch_matmat(V)
        return
    if change == "tensor attribute":  # Tempered ignores `offset`: any change must be seen
        assert op.is_stale
        return
    expected = dense(model, loss_fn, data, params=params) @ V
    torch.testing.assert_close(op.torch_matmat(V), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("change", [c for c in CHANGES if c != "parameter replaced"])
def test_kronecker_operators_refuse_or_recompute_after_every_change(change):
    model, loss_fn, data = _problem()
    kfac = curvops.KFACOperator(model, loss_fn, data)  # on_stale="raise"
    follow = curvops.KFACOperator(model, loss_fn, data, on_stale="recompute")
    with torch.no_grad():
        CHANGES[change](model)
    with pytest.raises(curvops.StaleOperatorError, match="stale"):
        kfac.trace()
    try:
        fresh = curvops.KFACOperator(model, loss_fn, data)
    except ValueError as err:  # e.g. a hook that rescales a layer's output: refused alike
        with pytest.raises(ValueError, match=re.escape(str(err)[:40])):
            follow.to_dense()
        return
    torch.testing.assert_close(follow.to_dense(), fresh.to_dense(), rtol=1e-12, atol=1e-14)


def test_tokens_are_equal_exactly_when_nothing_changed():
    model, _, _ = _problem()
    watch = ModelWatch(model)
    first = watch.token()
    model(torch.zeros(2, 3, dtype=torch.float64))  # a forward pass changes nothing
    assert watch.token() == first
    handle = model[0].register_forward_hook(_scale_output)
    assert watch.token() != first
    handle.remove()
    assert watch.token() == first  # removing the hook restores the function
    with torch.no_grad():
        w = model[2].weight
        w.data.copy_(w.data.flip(1))  # a permutation through .data: same norms and sum
    assert watch.token() != first


def test_global_module_hooks_are_followed():
    model, loss_fn, data = _problem()
    op = curvops.HessianOperator(model, loss_fn, data)
    V = torch.randn(op.shape[0], 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    op.torch_matmat(V)
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: out * 2.0 if isinstance(mod, nn.Linear) else None
    )
    try:
        assert op.is_stale
        expected = dense_hessian(model, loss_fn, data) @ V
        torch.testing.assert_close(op.torch_matmat(V), expected, rtol=1e-10, atol=1e-12)
    finally:
        handle.remove()
