"""Loading a user's ``FILE.py:FACTORY`` that returns ``(model, loss_fn, data)``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from torch import nn


class FactoryError(ValueError):
    """The factory file or its return value is not usable; the message says why."""


def load_factory(spec: str):
    """``"path/to/file.py:make"`` -> the function ``make`` defined in that file."""
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


def call_factory(spec: str):
    """Run the factory and check that it returned ``(model, loss_fn, data)``."""
    factory = load_factory(spec)
    try:
        result = factory()
    except Exception as err:
        raise FactoryError(f"{spec} raised {type(err).__name__}: {err}") from err
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise FactoryError(
            f"{spec} must return (model, loss_fn, data), got {type(result).__name__}"
            + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        )
    model, loss_fn, data = result
    if not isinstance(model, nn.Module):
        raise FactoryError(
            f"{spec}: the model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if not callable(loss_fn):
        raise FactoryError(f"{spec}: loss_fn must be callable, got {type(loss_fn).__name__}")
    if not hasattr(data, "__iter__"):
        raise FactoryError(f"{spec}: data must be an iterable of (X, y) batches")
    return model, loss_fn, data
