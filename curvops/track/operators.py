"""The tracker's operators: built once, at the first measurement, then following the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from curvops.compare import compare
from curvops.core.options import GGNMode
from curvops.operators import EKFACOperator, GGNOperator, HessianOperator, KFACOperator
from curvops.operators.exact.base import without_exact_settings
from curvops.operators.kronecker.shared_factors import build_reusing

CURVATURES = ("hessian", "ggn", "ggn-mc", "ggn-empirical")
APPROXIMATIONS = ("kfac", "ekfac")
_GGN_MODES: dict[str, GGNMode] = {"ggn": "exact", "ggn-mc": "mc", "ggn-empirical": "empirical"}
_NAMES = {"kfac": "KFAC", "ekfac": "EKFAC"}


@dataclass
class Operators:
    """``main`` (the top-k solves, trace, gradient), ``layers`` (blocks="layer") or None,
    ``exact`` (the GGN the approximations are compared with) and ``approx`` name -> op;
    ``fresh``: the approximations built at this measurement (no refresh needed)."""

    main: Any
    layers: Any = None
    exact: Any = None
    approx: dict[str, Any] = field(default_factory=dict)
    fresh: bool = True


def curvature_operator(kind: str, model: nn.Module, loss_fn: Callable, data: Iterable, **kw):
    """``kind`` in CURVATURES as an operator following the model (on_stale="recompute")."""
    if kind == "hessian":
        return HessianOperator(model, loss_fn, data, **kw)
    return GGNOperator(model, loss_fn, data, mode=_GGN_MODES[kind], **kw)


def build(
    model: nn.Module,
    loss_fn: Callable,
    data: Iterable,
    kind: str,
    layers: bool,
    approximations: Sequence[str],
    kw: dict[str, Any],
) -> Operators:
    """Every operator the tracker's measurements need, built once."""
    main = curvature_operator(kind, model, loss_fn, data, **kw)
    ops = Operators(main=main)
    if layers:
        ops.layers = curvature_operator(kind, model, loss_fn, data, blocks="layer", **kw)
    if approximations:
        ops.exact = main if kind == "ggn" else GGNOperator(model, loss_fn, data, **kw)
        kron = without_exact_settings(kw)  # micro_batch_size and the like: exact operators'

        def approximation(name: str, **reuse: Any) -> Any:  # EKFAC on KFAC's factors
            if name == "kfac":
                return KFACOperator(model, loss_fn, data, **kron)
            return EKFACOperator(model, loss_fn, data, eigenbasis="qr", **kron, **reuse)

        built = build_reusing(approximations, approximation)
        ops.approx = {_NAMES[name]: op for name, op in built.items()}
    return ops


def compare_approximations(ops: Operators, k: int, seed: int) -> dict[str, dict[str, Any]]:
    """Refresh KFAC / EKFAC to the current parameters (EKFAC's bases by a QR step from the
    previous ones), then ``curvops.compare`` them with the exact GGN: name -> metrics."""
    if not ops.fresh:
        for op in ops.approx.values():
            op.refresh()
    ops.fresh = False
    k = min(k, ops.exact.shape[0] - 1)
    report = compare(ops.exact, ops.approx, k=k, seed=seed, exact_name="GGN")
    return {
        a.name: {
            "frobenius_error": a.frobenius_error,
            "frobenius_stderr": a.frobenius_stderr,
            "overlap": a.overlap,
            "trace": a.trace,
            "exact_trace": report.exact_trace,
            "top_eigenvalue": float(a.eigenvalues[0]),
            "exact_top_eigenvalue": float(report.exact_eigenvalues[0]),
            "natural_gradient_cosine": a.natural_gradient_cosine,
            "method": report.method,
        }
        for a in report.approximations
    }
