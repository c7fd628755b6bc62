"""Loading a user's ``FILE.py:FACTORY``: it returns ``(model, loss_fn, data)``, optionally with
an optimizer, ``(model, loss_fn, data, optimizer)``, or a dict with those keys."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

KEYS = ("model", "loss_fn", "data", "optimizer")


class FactoryError(ValueError):
    """The factory file or its return value is not usable; the message says why."""


@contextmanager
def importable(folder: Path) -> Iterator[None]:
    """The factory file's folder first on sys.path: the file may import its neighbours."""
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def load_factory(spec: str) -> Callable[..., Any]:
    """``"path/to/file.py:make"`` -> the function ``make`` defined in that file (imported
    with the file's folder on sys.path)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise FactoryError(f"expected FILE.py:FACTORY, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise FactoryError(f"no such file: {file}")
    module_name = f"curvops_factory_{abs(hash(file.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, file)
    if loader_spec is None or loader_spec.loader is None:
        raise FactoryError(f"cannot import {file}: is it a Python file?")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        with importable(file.parent):
            loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise FactoryError(f"importing {file} failed: {type(err).__name__}: {err}") from err
    factory = getattr(module, name, None)
    if not callable(factory):
        found = _own_functions(module)
        listed = f"functions defined there: {', '.join(found)}" if found else "it defines none"
        raise FactoryError(f"{file} has no function {name!r} ({listed})")
    return factory


def _own_functions(module) -> list[str]:
    """Public callables defined in the module itself (not imported into it)."""
    return sorted(
        n
        for n, v in vars(module).items()
        if callable(v)
        and not n.startswith("_")
        and getattr(v, "__module__", None) == module.__name__
    )


@dataclass
class Problem:
    """What a factory returned: model, loss_fn, data and (optional) the optimizer."""

    model: nn.Module
    loss_fn: Any
    data: Any
    optimizer: Any = None


def load_problem(spec: str) -> Problem:
    """Run the factory and check what it returned: (model, loss_fn, data), the same with an
    optimizer as a fourth item, or a dict with keys model, loss_fn, data (and optimizer)."""
    factory = load_factory(spec)
    try:
        with importable(Path(spec.rpartition(":")[0]).parent):
            result = factory()
    except Exception as err:
        raise FactoryError(f"{spec} raised {type(err).__name__}: {err}") from err
    problem = Problem(*_unpack(spec, result))
    _check(spec, problem)
    return problem


def call_factory(spec: str) -> tuple[Any, Any, Any]:
    """Run the factory; returns ``(model, loss_fn, data)`` (an optimizer is dropped)."""
    problem = load_problem(spec)
    return problem.model, problem.loss_fn, problem.data


def _unpack(spec: str, result) -> tuple:
    if isinstance(result, dict):
        unknown = sorted(set(result) - set(KEYS))
        missing = [k for k in KEYS[:3] if k not in result]
        if unknown or missing:
            problems = [f"without {', '.join(missing)}"] if missing else []
            problems += [f"with unknown keys {', '.join(unknown)}"] if unknown else []
            raise FactoryError(
                f"{spec} returned a dict {' and '.join(problems)}; expected keys "
                f"{', '.join(KEYS[:3])} (and optionally optimizer)"
            )
        return tuple(result.get(k) for k in KEYS)
    if not isinstance(result, (tuple, list)) or len(result) not in (3, 4):
        length = f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""
        raise FactoryError(
            f"{spec} must return (model, loss_fn, data), got {type(result).__name__}{length} "
            "(also accepted: (model, loss_fn, data, optimizer), or a dict with those keys)"
        )
    return tuple(result)


def _check(spec: str, problem: Problem) -> None:
    if not isinstance(problem.model, nn.Module):
        raise FactoryError(
            f"{spec}: the model must be a torch.nn.Module, got {type(problem.model).__name__}"
        )
    if not callable(problem.loss_fn):
        raise FactoryError(
            f"{spec}: loss_fn must be callable, got {type(problem.loss_fn).__name__}"
        )
    if not hasattr(problem.data, "__iter__"):
        raise FactoryError(f"{spec}: data must be an iterable of (X, y) batches")
    opt = problem.optimizer
    if opt is not None and not (hasattr(opt, "step") and hasattr(opt, "param_groups")):
        raise FactoryError(
            f"{spec}: the optimizer must be a torch.optim.Optimizer, got {type(opt).__name__}"
        )
