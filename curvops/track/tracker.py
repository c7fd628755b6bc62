"""CurvatureTracker: the curvature of a model over training, on a fixed probe data set."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from curvops.core.checks import check_count
from curvops.distributed import rank_and_world_size
from curvops.linalg import hutchinson_trace, hutchpp_trace
from curvops.operators.base import CurvatureOperator
from curvops.track import operators
from curvops.track.layers import layer_top_eigenvalues
from curvops.track.record import CurvatureRecord, write_record
from curvops.track.warm import (
    WARM_METHODS,
    gradient_fraction,
    recompute_residuals,
    subspace_cosines,
    warm_eigsh,
)

TRACES = ("hutchinson", "hutch++")


class CurvatureTracker:
    """Measures the curvature of ``loss_fn(model(X), y)`` on ``data`` every ``every`` steps.

    Call ``tracker.step()`` after each optimizer step (it counts, and measures when due) or
    ``tracker.measure()`` to measure now; the ``CurvatureRecord``s are in ``tracker.records``.

    Args:
        model, loss_fn, data: as for the operators; ``data`` is the fixed probe set.
        every: measure when the step count is a multiple of ``every``, or a function
            step -> bool.
        k: number of eigenpairs (``which`` "LA" | "SA" | "LM" | "BE"), to tolerance ``tol``
            (‖A v − λ v‖ <= tol · ‖A‖, as ``curvops.eigsh``).
        curvature: "hessian", "ggn", "ggn-mc" or "ggn-empirical".
        warm: start each solve from the previous measurement (``method`` "lanczos" or
            "lobpcg", see ``curvops.track.warm``); False: every solve cold.
        trace: None, "hutchinson" or "hutch++", with ``trace_probes`` products, the same
            seeded probes at every measurement (differences over steps have less noise).
        layers: also λ_max per layer and the scores |λ_b| / max_c |λ_c| (warm started).
        approximations: any of "kfac", "ekfac": compared with the exact GGN by
            ``curvops.compare`` at each measurement (EKFAC: eigenbasis="qr", its bases
            refreshed from the previous ones by ``refresh()``).
        optimizer: to record the learning rate η (first parameter group) and 2/η.
        gradient: record ‖g‖ and the share of g's norm in the top-k eigenspace.
        verify: recompute the residuals with one extra k-column product per measurement.
        log: a JSON-lines file, written (emptied first) one record per measurement.
        eval_mode: measure with the model in eval mode (Dropout off, BatchNorm on its
            running statistics); each module's mode is restored afterwards.
        process_group: each rank holds a shard of ``data``; products are summed over the
            ranks and every rank gets rank 0's record (the log is rank 0's).
        **operator_kw: passed to every operator (e.g. ``num_data``, ``batch_size_fn``).

    The operators are built at the first measurement and then follow the parameters
    (Hessian / GGN recompute on a change; KFAC / EKFAC are refreshed at every measurement).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Iterable,
        every: int | Callable[[int], bool] = 10,
        k: int = 5,
        *,
        curvature: str = "hessian",
        which: str = "LA",
        tol: float = 1e-4,
        warm: bool = True,
        method: str = "lanczos",
        trace: str | None = None,
        trace_probes: int = 30,
        layers: bool = False,
        approximations: Sequence[str] = (),
        optimizer: torch.optim.Optimizer | None = None,
        gradient: bool = True,
        verify: bool = False,
        log: str | Path | None = None,
        eval_mode: bool = True,
        seed: int = 0,
        process_group: Any = None,
        **operator_kw: Any,
    ) -> None:
        _check_every(every)
        check_count("k", k, 1)
        check_count("trace_probes", trace_probes, 3)
        _check_in("curvature", curvature, operators.CURVATURES)
        _check_in("method", method, WARM_METHODS)
        if trace is not None:
            _check_in("trace", trace, TRACES)
        for name in approximations:
            _check_in("approximations", name, operators.APPROXIMATIONS)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.every, self.k, self.curvature, self.which, self.tol = every, k, curvature, which, tol
        self.warm, self.method, self.trace, self.trace_probes = warm, method, trace, trace_probes
        self.layers, self.approximations = layers, tuple(approximations)
        self.optimizer, self.gradient, self.verify = optimizer, gradient, verify
        self.eval_mode, self.seed, self.process_group = eval_mode, seed, process_group
        self.log = Path(log) if log is not None else None
        self.records: list[CurvatureRecord] = []
        self.count = 0
        self._ops: operators.Operators | None = None
        self._vectors: np.ndarray | None = None
        self._layer_vectors: list[torch.Tensor] | None = None
        self._kw = {"process_group": process_group, **operator_kw}
        if self.log is not None and self._writes:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self.log.write_text("")

    # ------------------------------------------------------------------ schedule
    def step(self, step: int | None = None) -> CurvatureRecord | None:
        """Count one optimizer step (or set the count to ``step``); measure when due."""
        self.count = self.count + 1 if step is None else int(step)
        return self.measure() if self._due(self.count) else None

    def _due(self, step: int) -> bool:
        if callable(self.every):
            return bool(self.every(step))
        return step % self.every == 0

    # ------------------------------------------------------------------ measuring
    def measure(self) -> CurvatureRecord:
        """Measure now (at step ``self.count``); appends and logs the record, returns it."""
        with _measuring(self.model, self.eval_mode):
            record = self._measure()
        record = self._share(record)
        self.records.append(record)
        if self.log is not None and self._writes:
            write_record(self.log, record)
        return record

    @property
    def operator(self) -> CurvatureOperator:
        """The curvature operator of the top-k solves (built at the first measurement)."""
        return self._operators().main

    def _operators(self) -> operators.Operators:
        if self._ops is None:
            with _measuring(self.model, self.eval_mode):
                self._ops = operators.build(
                    self.model, self.loss_fn, self.data, self.curvature, self.layers,
                    self.approximations, self._kw,
                )  # fmt: skip
        return self._ops

    def _measure(self) -> CurvatureRecord:
        start = time.perf_counter()
        ops = self._operators()
        seed = self.seed + len(self.records)
        fields, matvecs = self._eigenpairs(ops.main, seed)
        if self.gradient:
            fields.update(self._gradient(ops.main, self._vectors))
        if self.trace is not None:
            fields.update(self._trace(ops.main, matvecs))
        if self.layers:
            fields.update(self._layer_scores(ops.layers, matvecs, seed))
        if self.approximations:
            fields["approximations"] = operators.compare_approximations(ops, self.k, self.seed)
        fields.update(_learning_rate(self.optimizer))
        return CurvatureRecord(
            step=self.count, n_matvecs=sum(matvecs.values()),
            seconds=time.perf_counter() - start, matvecs=matvecs, **fields,
        )  # fmt: skip

    def _eigenpairs(self, op, seed: int) -> tuple[dict[str, Any], dict[str, int]]:
        """The top-k solve (warm from the previous vectors), its fields and products."""
        previous = self._vectors if self.warm else None
        res = warm_eigsh(op, self.k, previous, self.which, self.tol, self.method, seed=seed)
        matvecs = {"eigsh": int(res.n_matvecs)}
        if self.verify:
            matvecs["verify"] = recompute_residuals(op, res, self.tol)
        fields: dict[str, Any] = {
            "eigenvalues": res.eigenvalues.tolist(),
            "residual_norms": res.residual_norms.tolist(),
            "converged": [bool(c) for c in res.converged],
            "curvature": self.curvature, "which": self.which, "tol": float(self.tol),
            "warm": previous is not None,
            "method": self.method if previous is not None else "lanczos",
        }  # fmt: skip
        if self._vectors is not None:
            cosines = subspace_cosines(self._vectors, res.eigenvectors)
            fields["subspace_cosines"] = cosines.tolist()
        self._vectors = res.eigenvectors
        return fields, matvecs

    def _gradient(self, op, U) -> dict[str, float]:
        g = op.gradient().detach().to(torch.float64).cpu().numpy()
        return {
            "gradient_norm": float(np.linalg.norm(g)),
            "gradient_fraction": gradient_fraction(U, g),
        }

    def _trace(self, op, matvecs: dict[str, int]) -> dict[str, Any]:
        if self.trace == "hutchinson":
            est = hutchinson_trace(op, n_probes=self.trace_probes, seed=self.seed)
        else:
            est = hutchpp_trace(op, n_matvecs=self.trace_probes, seed=self.seed)
        matvecs["trace"] = int(est.n_matvecs)
        return {"trace": est.estimate, "trace_stderr": est.std_error, "trace_method": est.method}

    def _layer_scores(self, op, matvecs: dict[str, int], seed: int) -> dict[str, Any]:
        previous = self._layer_vectors if self.warm else None
        res = layer_top_eigenvalues(op, previous, tol=self.tol, seed=seed)
        self._layer_vectors = res.vectors
        matvecs["layers"] = int(res.n_matvecs)
        return {
            "layer_names": list(res.names),
            "layer_eigenvalues": res.eigenvalues.tolist(),
            "layer_scores": res.scores.tolist(),
            "layer_converged": [bool(c) for c in res.converged],
        }

    # ------------------------------------------------------------------ ranks, plots
    @property
    def _writes(self) -> bool:
        return rank_and_world_size(self.process_group)[0] == 0

    def _share(self, record: CurvatureRecord) -> CurvatureRecord:
        """Every rank gets rank 0's record (its timings included): one broadcast."""
        if self.process_group is None:
            return record
        import torch.distributed as dist

        box = [record.to_dict()]
        dist.broadcast_object_list(
            box, src=dist.get_global_rank(self.process_group, 0), group=self.process_group
        )
        return CurvatureRecord.from_dict(box[0])

    def plot(self, path: str | Path | None = None) -> Any:
        """Sharpness (with 2/η), trace, layer scores over steps and subspace drift."""
        from curvops.track.plot import plot_records

        return plot_records(self.records, path)

    def __repr__(self) -> str:
        return (
            f"CurvatureTracker(curvature={self.curvature!r}, k={self.k}, every={self.every!r}, "
            f"step={self.count}, records={len(self.records)})"
        )


@contextmanager
def _measuring(model: nn.Module, eval_mode: bool):
    """Gradients on and (if ``eval_mode``) every module in eval mode; modes restored after."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def _learning_rate(optimizer) -> dict[str, float]:
    if optimizer is None:
        return {}
    lr = float(optimizer.param_groups[0]["lr"])
    return {"lr": lr, "two_over_lr": 2.0 / lr if lr > 0 else float("inf")}


def _check_every(every) -> None:
    if not callable(every):
        check_count("every", every, 1)


def _check_in(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
