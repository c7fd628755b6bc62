"""``analyze``: one call from a model to a full curvature ``Report``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from curvops import plot
from curvops.compare import block_names
from curvops.compare import compare as compare_operators
from curvops.core.options import CurvatureKind, check_choice
from curvops.linalg import (
    block_top_eigenvalues,
    eigsh,
    hutchpp_trace,
    spectral_density,
)
from curvops.operators import EKFACOperator, GGNOperator, HessianOperator, KFACOperator
from curvops.report.provenance import Counted, Meter, provenance
from curvops.report.report import Report

PARTS = ("top", "bottom", "trace", "density", "layers", "compare")
APPROXIMATIONS = {"kfac": "KFAC", "ekfac": "EKFAC", "ggn-mc": "MC Fisher", "ggn-empirical": "EF"}
KRONECKER = ("kfac", "ekfac")
GGN_MODES = {"ggn": "exact", "ggn-mc": "mc", "ggn-empirical": "empirical"}


def build_operator(
    kind: str, model: nn.Module, loss_fn: Callable, data: Iterable, seed: int = 0, **kwargs: Any
):
    """The curvops operator of ``kind``: hessian, ggn, ggn-mc, ggn-empirical, kfac, ekfac."""
    check_choice("curvature", kind, CurvatureKind)
    if kind == "hessian":
        return HessianOperator(model, loss_fn, data, **kwargs)
    if kind in KRONECKER:
        return (KFACOperator if kind == "kfac" else EKFACOperator)(model, loss_fn, data, **kwargs)
    if kind == "ggn-mc":
        kwargs = dict(kwargs, seed=seed)
    return GGNOperator(model, loss_fn, data, mode=GGN_MODES[kind], **kwargs)  # type: ignore[arg-type]


def analyze(
    model: nn.Module,
    loss_fn: Callable,
    data: Iterable,
    k: int = 10,
    *,
    curvature: str = "hessian",
    bottom: int = 3,
    tol: float = 1e-6,
    seed: int = 0,
    n_probes: int = 99,
    density_probes: int = 8,
    lanczos_steps: int = 60,
    backend: str = "lanczos",
    bottom_backend: str | None = None,
    parts: Sequence[str] | None = None,
    compare: Sequence[str] | None = None,
    progress: bool = False,
    **operator_kwargs: Any,
) -> Report:
    """The curvature A of ``loss_fn(model(X), y)`` over all of ``data``, in one report.

    Parts (``parts``; default all but "compare", which ``compare=`` adds):
    "top": k eigenpairs by ``eigsh(which="LA")``; "bottom": ``bottom`` pairs, which="SA";
    each λ_i with a bound b_i = max(tol·‖A‖, ‖A v_i − λ_i v_i‖), ‖A‖ ≈ the largest |λ| found
    (``Report.bounds``); "trace": Hutch++ with ``n_probes`` products, ± its standard error;
    "density": SLQ, ``density_probes`` probes × ``lanczos_steps``; "layers":
    ``block_top_eigenvalues(normalize=True)`` of the operator rebuilt with blocks="layer"
    (KFAC / EKFAC: their own blocks); "compare": the exact GGN against the approximations
    ``compare`` names (of "kfac", "ekfac", "ggn-mc", "ggn-empirical"; kfac and ekfac when
    "compare" is in ``parts`` alone), by ``curvops.compare``.

    ``curvature``: "hessian", "ggn", "ggn-mc", "ggn-empirical", "kfac" or "ekfac". ``seed``
    seeds every draw (start vectors, probes, Monte-Carlo labels). ``backend``: eigsh's for
    the top; ``bottom_backend`` for the bottom (default "lobpcg" for a positive semi-definite
    curvature, whose bottom is usually a null space of high multiplicity, which a
    single-vector Krylov solver (Lanczos, ARPACK) finds once; else ``backend``).
    ``progress``: eigsh's bar and a line per step; ``operator_kwargs`` go to every operator
    (``params``, ``batch_size_fn``, ``chunk_size``, ...). The provenance holds versions,
    device, threads, N, P, these settings and the products and seconds of each step.
    """
    wanted, approx = _choose(parts, compare)
    options = _Options(
        curvature,
        k,
        bottom,
        tol,
        seed,
        n_probes,
        density_probes,
        lanczos_steps,
        backend,
        bottom_backend,
        list(wanted),
        list(approx),
        sorted(operator_kwargs),
    )
    kwargs = dict(operator_kwargs, progress=False)
    run = _Analysis(model, loss_fn, data, kwargs, options, Meter(progress), progress)
    with run.meter.step("build"):
        op = run.operator(curvature)
    report = run.new_report(op)
    for part in wanted:
        if part != "bottom" or bottom > 0:
            with run.meter.step(part):
                getattr(run, part)(op, report)
    assert report.provenance is not None
    report.provenance.steps = run.meter.steps
    return report


@dataclass
class _Options:
    """Every setting of one analysis (stored in the report's provenance)."""

    curvature: str
    k: int
    bottom: int
    tol: float
    seed: int
    n_probes: int
    density_probes: int
    lanczos_steps: int
    backend: str
    bottom_backend: str | None
    parts: list[str]
    compare: list[str]
    operator_kwargs: list[str]


@dataclass
class _Analysis:
    """The model, data, options and meter of one analysis; one method per part."""

    model: nn.Module
    loss_fn: Callable
    data: Iterable
    kwargs: dict[str, Any]
    o: _Options
    meter: Meter
    progress: bool

    def operator(self, kind: str, **extra: Any) -> Counted:
        """A counted operator of ``kind`` over the model and data."""
        op = build_operator(
            kind, self.model, self.loss_fn, self.data, self.o.seed, **self.kwargs, **extra
        )
        return self.meter.count(op)

    def new_report(self, op: Counted) -> Report:
        """The report's identity and provenance; tol floored at 50 eps as eigsh does."""
        return Report(
            model=type(self.model).__name__,
            curvature=self.o.curvature,
            num_params=int(op.shape[0]),
            num_data=int(op.num_data),
            tol=max(float(self.o.tol), 50 * torch.finfo(op.torch_dtype).eps),
            provenance=provenance(self.model, op.op, asdict(self.o)),
        )

    def top(self, op: Counted, report: Report) -> None:
        o = self.o
        report.top = eigsh(
            op, o.k, "LA", o.tol, backend=o.backend, seed=o.seed, progress=self.progress
        )

    def bottom(self, op: Counted, report: Report) -> None:
        o = self.o
        backend = o.bottom_backend or ("lobpcg" if op.is_psd else o.backend)
        report.bottom = eigsh(op, o.bottom, "SA", o.tol, backend=backend, seed=o.seed)

    def trace(self, op: Counted, report: Report) -> None:
        report.trace = hutchpp_trace(op, n_matvecs=self.o.n_probes, seed=self.o.seed)

    def density(self, op: Counted, report: Report) -> None:
        o = self.o
        report.density = spectral_density(op, o.density_probes, o.lanczos_steps, seed=o.seed)

    def layers(self, op: Counted, report: Report) -> None:
        """Per-block λ_max and scores of the operator rebuilt with blocks="layer" (KFAC /
        EKFAC: their own blocks, named by parameter)."""
        kronecker = self.o.curvature in KRONECKER
        blocked = op if kronecker else self.operator(self.o.curvature, blocks="layer")
        layers = block_top_eigenvalues(
            blocked, normalize=True, tol=self.o.tol, backend=self.o.backend
        )
        if kronecker:
            layers.names = block_names(op.op)
        report.layers = layers
        report.layer_labels = (
            list(layers.names) if kronecker else plot.layer_labels(self.model, layers.names)
        )

    def compare(self, op: Counted, report: Report) -> None:
        """The exact GGN (``op`` itself when it is one) against each named approximation."""
        o = self.o
        is_ggn = isinstance(op.op, GGNOperator) and op.op.mode == "exact"
        exact = op if is_ggn else self.operator("ggn")
        ops = {
            APPROXIMATIONS[a]: build_operator(
                a, self.model, self.loss_fn, self.data, o.seed, **self.kwargs
            )
            for a in o.compare
        }
        k = min(o.k, exact.shape[0] - 1)
        report.comparison = compare_operators(
            exact, ops, k=k, n_probes=o.n_probes, seed=o.seed, backend=o.backend, exact_name="GGN"
        )


def _choose(parts, compare) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The parts to compute and the approximations to compare, checked."""
    chosen = list(PARTS[:-1] if parts is None else parts)
    if isinstance(parts, str) or any(p not in PARTS for p in chosen):
        raise ValueError(f"parts must be a list of {', '.join(map(repr, PARTS))}; got {parts!r}")
    if compare is not None and "compare" not in chosen:
        chosen.append("compare")
    approx = tuple(KRONECKER if compare is None else compare) if "compare" in chosen else ()
    if isinstance(compare, str) or any(a not in APPROXIMATIONS for a in approx):
        names = ", ".join(map(repr, APPROXIMATIONS))
        raise ValueError(f"compare must be a list of {names}; got {compare!r}")
    if "compare" in chosen and not approx:
        raise ValueError("compare=[] leaves nothing to compare: name one, e.g. compare=['kfac']")
    return tuple(p for p in PARTS if p in chosen), approx
