"""Every string option of the public API as a ``Literal`` alias, checked in one helper."""

from __future__ import annotations

from typing import Any, Literal, get_args

Reduction = Literal["mean", "sum"]
OnStale = Literal["recompute", "raise"]
HvpMethod = Literal["double_backward", "forward_over_reverse"]
GGNMode = Literal["exact", "mc", "empirical"]
JvpMethod = Literal["auto", "forward", "reverse"]
ColumnMode = Literal["rule", "per_column", "batched", "auto"]
FisherType = Literal["type2", "mc", "empirical", "forward-only"]
Approx = Literal["expand", "reduce"]
FallbackMode = Literal["auto", "exact", "diagonal", "error"]
Correction = Literal["auto", "per_example", "gramian", "lean"]
EigenbasisMethod = Literal["eigh", "qr"]
InverseMethod = Literal["auto", "cg", "minres"]
Which = Literal["LA", "SA", "LM", "BE"]
TopWhich = Literal["LA", "LM"]  # analyze's top part
ExactKind = Literal["ggn", "hessian"]  # the exact side of a comparison
Backend = Literal["arpack", "lanczos", "lobpcg"]
CurvatureKind = Literal["hessian", "ggn", "ggn-mc", "ggn-empirical", "kfac", "ekfac"]


def choices(alias: Any) -> tuple[str, ...]:
    """The allowed strings of a ``Literal`` alias, in declaration order."""
    return tuple(get_args(alias))


def check_choice(name: str, value: object, alias: Any) -> Any:
    """``value`` if it is one of ``alias``'s strings, else a ValueError naming them."""
    allowed = choices(alias)
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value
