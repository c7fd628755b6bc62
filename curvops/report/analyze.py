"""``analyze``: one call from a model to a full curvature ``Report``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from curvops import plot
from curvops.compare import block_names
from curvops.compare import compare as compare_operators
from curvops.core.options import CurvatureKind, ExactKind, TopWhich, check_choice
from curvops.landscapes import eigen_slices
from curvops.linalg import (
    block_top_eigenvalues,
    eigsh,
    hutchpp_trace,
    spectral_density,
)
from curvops.operators import EKFACOperator, GGNOperator, HessianOperator, KFACOperator
from curvops.operators.exact.base import without_exact_settings
from curvops.operators.kronecker.shared_factors import build_reusing
from curvops.report.lines import result_line, start_line
from curvops.report.progress import Feedback
from curvops.report.provenance import Counted, Meter, provenance
from curvops.report.report import CURVATURE_NAMES, Report

PARTS = ("top", "bottom", "trace", "density", "layers", "compare", "landscape")
DEFAULT_PARTS = PARTS[:5]  # "compare" and "landscape" are asked for
DENSE_MAX = 3000  # compare's dense route up to this P (P columns of the exact operator)
LARGE_DENSE = 2000  # a dense comparison above this P says so before it starts
APPROXIMATIONS = {"kfac": "KFAC", "ekfac": "EKFAC", "ggn-mc": "MC Fisher", "ggn-empirical": "EF"}
KRONECKER = ("kfac", "ekfac")
GGN_MODES = {"ggn": "exact", "ggn-mc": "mc", "ggn-empirical": "empirical"}


def build_operator(
    kind: str, model: nn.Module, loss_fn: Callable, data: Iterable, seed: int = 0, **kwargs: Any
) -> Any:
    """The curvops operator of ``kind``: hessian, ggn, ggn-mc, ggn-empirical, kfac, ekfac."""
    check_choice("curvature", kind, CurvatureKind)
    if kind == "hessian":
        return HessianOperator(model, loss_fn, data, **kwargs)
    if kind in KRONECKER:  # the exact operators' own settings (micro_batch_size, ...) dropped
        cls = KFACOperator if kind == "kfac" else EKFACOperator
        return cls(model, loss_fn, data, **without_exact_settings(kwargs))
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
    which: str = "LA",
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
    compare_exact: str = "ggn",
    slices: int = 3,
    progress: bool | Feedback = False,
    **operator_kwargs: Any,
) -> Report:
    """The curvature A of ``loss_fn(model(X), y)`` over all of ``data``, in one report.

    Parts (``parts``; default top, bottom, trace, density, layers; ``compare=`` adds
    "compare"): "top": k eigenpairs by ``eigsh(which=which)`` ("LA", or "LM" for the
    largest |λ|); "bottom": ``bottom`` pairs, which="SA"; each λ_i with a bound
    b_i = max(tol·‖A‖, ‖A v_i − λ_i v_i‖), ‖A‖ ≈ the largest |λ| found (``Report.bounds``);
    "trace": Hutch++ with ``n_probes`` products, ± its standard error; "density": SLQ,
    ``density_probes`` probes × ``lanczos_steps``; "layers":
    ``block_top_eigenvalues(normalize=True)`` of the operator rebuilt with blocks="layer"
    (KFAC / EKFAC: their own blocks); "compare": the exact ``compare_exact`` ("ggn" or
    "hessian") against the approximations ``compare`` names (of "kfac", "ekfac", "ggn-mc",
    "ggn-empirical"; kfac and ekfac when "compare" is in ``parts`` alone), by
    ``curvops.compare``; "landscape" (needs "top"): the loss along each of the first
    ``slices`` top eigenvectors with its quadratic model (``curvops.landscapes.eigen_slices``).

    ``curvature``: "hessian", "ggn", "ggn-mc", "ggn-empirical", "kfac" or "ekfac". ``seed``
    seeds every draw (start vectors, probes, Monte-Carlo labels). ``backend``: eigsh's for
    the top; ``bottom_backend`` for the bottom (default "lobpcg" for a positive semi-definite
    curvature, whose bottom is usually a null space of high multiplicity, which a
    single-vector Krylov solver (Lanczos, ARPACK) finds once; else ``backend``).
    ``progress``: True for a start line (P, N, device, dtype, threads), a bar per step
    (products, rate, ETA), a note before a long step and a line per result, on stderr; a
    ``curvops.report.progress.Feedback`` to send them elsewhere. ``operator_kwargs`` go to
    every operator (``params``, ``batch_size_fn``, ``chunk_size``, ...). The provenance
    holds versions, device, threads, N, P, these settings and the products and seconds of
    each step.
    """
    wanted, approx = _choose(parts, compare)
    check_choice("which", which, TopWhich)
    check_choice("compare_exact", compare_exact, ExactKind)
    options = _Options(
        curvature, which, k, bottom, tol, seed, n_probes, density_probes, lanczos_steps,
        backend, bottom_backend, list(wanted), list(approx), compare_exact, slices,
        sorted(operator_kwargs),
    )  # fmt: skip
    feedback = Feedback.of(progress)
    kwargs = dict(operator_kwargs, progress=False)
    run = _Analysis(model, loss_fn, data, kwargs, options, Meter(feedback))
    with run.meter.step("build"):
        op = run.operator(curvature)
    report = run.new_report(op)
    feedback.line(start_line(report))
    for part in wanted:
        if part != "bottom" or bottom > 0:
            with run.meter.step(part, **run.size(part, op)):
                getattr(run, part)(op, report)
            feedback.line(result_line(report, part))
    return report


@dataclass
class _Options:
    """Every setting of one analysis (stored in the report's provenance)."""

    curvature: str
    which: str
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
    compare_exact: str
    slices: int
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

    def operator(self, kind: str, **extra: Any) -> Counted:
        """A counted operator of ``kind`` over the model and data."""
        op = build_operator(
            kind, self.model, self.loss_fn, self.data, self.o.seed, **self.kwargs, **extra
        )
        return self.meter.count(op)

    def new_report(self, op: Counted) -> Report:
        """The report's identity and provenance (its steps: the meter's, as they come); tol
        floored at 50 eps as eigsh does."""
        report = Report(
            model=type(self.model).__name__,
            curvature=self.o.curvature,
            num_params=int(op.shape[0]),
            num_data=int(op.num_data),
            tol=max(float(self.o.tol), 50 * torch.finfo(op.torch_dtype).eps),
            provenance=provenance(self.model, op.op, asdict(self.o)),
        )
        assert report.provenance is not None
        report.provenance.steps = self.meter.steps
        return report

    def size(self, part: str, op: Counted) -> dict[str, Any]:
        """The products a part takes: ``total`` when known, else ``least`` (eigsh: its
        first Krylov basis or block); a large dense comparison says so first."""
        o, P = self.o, int(op.shape[0])
        if part == "trace":
            return {"total": o.n_probes}
        if part == "density":
            return {"total": o.density_probes * o.lanczos_steps}
        if part == "compare" and P <= DENSE_MAX:
            if P > LARGE_DENSE:
                self.meter.feedback.note(_dense_note(P, o.compare_exact))
            return {"total": P}
        if part == "landscape":
            return {"total": min(o.slices, o.k), "unit": "slices"}
        count = {"top": o.k, "bottom": o.bottom}.get(part)
        return {"least": min(P, max(2 * count + 1, 20))} if count else {}

    def top(self, op: Counted, report: Report) -> None:
        o = self.o
        report.top = eigsh(op, o.k, o.which, o.tol, backend=o.backend, seed=o.seed)

    def bottom(self, op: Counted, report: Report) -> None:
        """The bottom pairs, their tolerance measured against ‖A‖ of the top part when it
        ran (a bottom solver sees only small Ritz values)."""
        o = self.o
        backend = o.bottom_backend or ("lobpcg" if op.is_psd else o.backend)
        known = report.norm_estimate if report.top is not None else math.nan
        norm = known if math.isfinite(known) else None
        report.bottom = eigsh(op, o.bottom, "SA", o.tol, backend=backend, seed=o.seed, norm=norm)

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
        """The exact GGN or Hessian (``op`` itself when it is that) against each named
        approximation."""
        o = self.o
        exact = op if _is_kind(op.op, o.compare_exact) else self.operator(o.compare_exact)
        built = build_reusing(  # EKFAC on KFAC's factors when both are compared
            o.compare,
            lambda a, **reuse: build_operator(
                a, self.model, self.loss_fn, self.data, o.seed, **self.kwargs, **reuse
            ),
        )
        ops = {APPROXIMATIONS[a]: op for a, op in built.items()}
        k = min(o.k, exact.shape[0] - 1)
        report.comparison = compare_operators(
            exact, ops, k=k, n_probes=o.n_probes, seed=o.seed, backend=o.backend,
            dense_max=DENSE_MAX, exact_name=CURVATURE_NAMES[o.compare_exact],
        )  # fmt: skip

    def landscape(self, op: Counted, report: Report) -> None:
        """The loss along v_1 .. v_n of the top part, each with its quadratic model."""
        assert report.top is not None
        keep = ("params", "batch_size_fn", "reduction")
        report.landscapes = eigen_slices(
            self.model, self.loss_fn, self.data, report.top, min(self.o.slices, self.o.k),
            progress=lambda: self.meter.advance(1),
            **{key: self.kwargs[key] for key in keep if key in self.kwargs},
        )  # fmt: skip


def _is_kind(op: Any, kind: str) -> bool:
    """Whether ``op`` is the exact GGN ("ggn") or the Hessian ("hessian")."""
    if kind == "hessian":
        return isinstance(op, HessianOperator)
    return isinstance(op, GGNOperator) and op.mode == "exact"


def _dense_note(P: int, exact: str) -> str:
    mib = P * P * 8 / 2**20
    return (
        f"note: compare builds the exact {CURVATURE_NAMES[exact]} densely: {P:,} products "
        f"(one per parameter) and {P:,} x {P:,} matrices ({mib:,.0f} MiB each in float64); "
        "this takes long on a CPU"
    )


def _choose(parts, compare) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The parts to compute and the approximations to compare, checked."""
    chosen = list(DEFAULT_PARTS if parts is None else parts)
    if isinstance(parts, str) or any(p not in PARTS for p in chosen):
        raise ValueError(f"parts must be a list of {', '.join(map(repr, PARTS))}; got {parts!r}")
    if compare is not None and "compare" not in chosen:
        chosen.append("compare")
    if "landscape" in chosen and "top" not in chosen:
        raise ValueError(
            "the landscape part slices the loss along the top eigenvectors: add 'top' to parts"
        )
    approx = tuple(KRONECKER if compare is None else compare) if "compare" in chosen else ()
    if isinstance(compare, str) or any(a not in APPROXIMATIONS for a in approx):
        names = ", ".join(map(repr, APPROXIMATIONS))
        raise ValueError(f"compare must be a list of {names}; got {compare!r}")
    if "compare" in chosen and not approx:
        raise ValueError("compare=[] leaves nothing to compare: name one, e.g. compare=['kfac']")
    return tuple(p for p in PARTS if p in chosen), approx
