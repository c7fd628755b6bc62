"""Provenance of a report: versions, machine, model, data, settings, cost per step."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import scipy
import torch

from curvops.core.records import encode
from curvops.interface import SymmetricTorchOperator
from curvops.report.progress import Feedback, long_step_note


@dataclass
class Step:
    """One step of an analysis: ``products`` columns multiplied by the exact operators
    (each matmat is one pass over the data), wall ``seconds``."""

    products: int
    seconds: float


@dataclass
class Provenance:
    """Where a report comes from: enough to rerun it, and to tell why two reports differ.

    ``versions``: curvops, torch, numpy, scipy, python; ``platform``; ``device`` (with the
    CUDA device name) and ``threads`` (torch's intra-op threads); ``model`` (class name),
    ``num_params`` P, ``num_data`` N, ``loss`` (class name) and ``reduction``, ``dtype``;
    ``settings``: every option of the analysis; ``steps``: products and seconds per step;
    ``created``: UTC time, ISO 8601.
    """

    versions: dict[str, str]
    platform: str
    device: str
    threads: int
    model: str
    num_params: int
    num_data: int
    loss: str
    reduction: str
    dtype: str
    settings: dict[str, Any]
    steps: dict[str, Step] = field(default_factory=dict)
    created: str = ""

    @property
    def total_seconds(self) -> float:
        return float(sum(s.seconds for s in self.steps.values()))

    @property
    def total_products(self) -> int:
        return int(sum(s.products for s in self.steps.values()))


def versions() -> dict[str, str]:
    """The versions that decide the numbers: curvops, torch, numpy, scipy, python."""
    import curvops

    return {
        "curvops": curvops.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def describe_device(device: torch.device) -> str:
    """ "cpu", or "cuda:0 (NVIDIA H200)"."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def provenance(model: Any, op: Any, settings: dict[str, Any]) -> Provenance:
    """The provenance of an analysis of ``model`` through the curvature operator ``op``;
    ``settings`` are stored as JSON would give them back (tuples as lists)."""
    return Provenance(
        versions=versions(),
        platform=f"{platform.platform()}; {sys.implementation.name}",
        device=describe_device(op.device),
        threads=torch.get_num_threads(),
        model=type(model).__name__,
        num_params=int(op.shape[0]),
        num_data=int(op.num_data),
        loss=type(getattr(op, "token_loss", None) or op.loss_fn).__name__,  # CausalLMLoss
        reduction=str(op.reduction),
        dtype=str(op.torch_dtype).removeprefix("torch."),
        settings=json.loads(json.dumps(encode(settings))),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


class Counted(SymmetricTorchOperator):
    """``op`` with its products counted (``columns``) and timed, each reported to
    ``on_product(columns, seconds)``; every other attribute is ``op``'s."""

    def __init__(self, op: Any, on_product: Callable[[int, float], None] | None = None) -> None:
        self.op, self.columns, self.on_product = op, 0, on_product
        self.device, self.torch_dtype = op.device, op.torch_dtype
        super().__init__(dtype=op.dtype, shape=op.shape)

    def torch_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """A @ M for M (P,) or (P, k), counting k columns."""
        columns = 1 if M.ndim == 1 else int(M.shape[1])
        start = time.perf_counter()
        result = self.op.torch_matmat(M)
        self.columns += columns
        if self.on_product is not None:
            self.on_product(columns, time.perf_counter() - start)
        return result

    def __getattr__(self, name: str) -> Any:
        if name == "op":  # not set yet: no recursion during construction
            raise AttributeError(name)
        return getattr(self.op, name)


class Meter:
    """Times named steps and counts the products of the ``Counted`` operators it made; a
    bar per step and a note when the first product says the step will take long."""

    def __init__(self, feedback: Feedback | None = None) -> None:
        self.steps: dict[str, Step] = {}
        self.ops: list[Counted] = []
        self.feedback = feedback or Feedback()
        self._bar: Any = None
        self._counting = True  # the bar counts products (else the step's own unit)
        self._pending: tuple[str, int, bool] | None = None  # the step's note, to be timed

    def count(self, op: Any) -> Counted:
        counted = Counted(op, self._on_product)
        self.ops.append(counted)
        return counted

    @contextmanager
    def step(
        self, name: str, total: int | None = None, least: int | None = None, unit: str = ""
    ) -> Iterator[None]:
        """One step: ``total`` products when known (the bar's ETA), else at least ``least``
        (for the note only); a ``unit`` other than products: the bar counts ``advance``."""
        columns0, start = self._columns(), time.perf_counter()
        count = None if unit else total or least
        self._pending = (name, count, total is not None) if count else None
        self._bar = self.feedback.bar(name, total, unit or "products")
        self._counting = not unit
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.close()
            self._bar = self._pending = None
        self.steps[name] = Step(self._columns() - columns0, time.perf_counter() - start)

    def advance(self, n: int) -> None:
        """``n`` more of the step's own unit done (e.g. landscape slices)."""
        if self._bar is not None and not self._counting:
            self._bar.update(n)

    def _on_product(self, columns: int, seconds: float) -> None:
        if self._bar is not None and self._counting:
            self._bar.update(columns)
        if self._pending is not None:
            name, count, exact = self._pending
            self._pending = None
            note = long_step_note(name, count, seconds / columns, exact)
            if note:
                self.feedback.note(note)

    def _columns(self) -> int:
        return sum(op.columns for op in self.ops)
