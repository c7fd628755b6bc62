"""Ops that PyTorch cannot differentiate the way a product needs, named in the error.

Some ops have a first derivative but no derivative of it (``aten::hardsigmoid_backward``:
nn.Hardsigmoid, as in MobileNetV3), or no forward-mode rule (fused attention and RNN
kernels, ``rrelu_with_noise``). The Hessian needs second derivatives; the GGN only first
ones, through forward mode or reverse mode (a backward of a backward, linear in u).
"""

from __future__ import annotations

import re

_PATTERNS = (
    r"derivative for (aten::\w+) is not implemented",
    r"forward AD with (aten::\w+|\w+)",
    r"do not yet support (aten::\w+)",
)


def missing_op(err: BaseException) -> str | None:
    """The op named by an autograd error about a missing derivative rule, else None."""
    for pattern in _PATTERNS:
        match = re.search(pattern, str(err))
        if match:
            return match.group(1)
    return None


def hessian_message(op: str) -> str:
    """The HessianOperator's message for ``op`` (a backward op: no second derivative; else
    no forward-mode rule, with hvp="forward_over_reverse")."""
    if not op.endswith("_backward"):
        return (
            f"{op} has no forward-mode rule, which hvp='forward_over_reverse' needs: build the "
            "HessianOperator with hvp='double_backward' (the default)"
        )
    base = op.removesuffix("_backward")
    if "scaled_dot_product" in op:
        return (
            f"PyTorch has no second derivative for {base}, a fused attention kernel: build "
            "the operator with math_attention=True (the default), which runs attention with "
            "its twice-differentiable math kernel during the products"
        )
    return (
        f"PyTorch has no second derivative for {base} ({op} is not differentiable), so the "
        "Hessian of this model is not available (e.g. nn.Hardsigmoid, used in MobileNetV3). "
        "GGNOperator, KFACOperator and EKFACOperator need only first derivatives and work "
        "on this model"
    )
