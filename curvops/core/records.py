"""Result dataclasses <-> strict JSON, decoded by their type hints, and NaN-aware equality.

``encode``: dataclasses -> dicts of their fields, numpy arrays / scalars -> lists / numbers,
NaN and inf -> null (strict JSON). ``decode(cls, d)``: the inverse, field by field from
``cls``'s type hints: ``np.ndarray`` from nested lists (bool when every entry is a bool,
else float64 with null -> NaN), ``float`` null -> NaN, ``X | None`` null -> None, nested
dataclasses, lists and dicts; keys that are not fields are ignored. Limits of JSON: inf
comes back as NaN, an empty array as shape (0,), NaN in an ``X | None`` field as None. ``same(a, b)``: deep
equality where arrays compare by shape, dtype and values, and NaN equals NaN.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import numpy as np


def encode(obj: Any) -> Any:
    """``obj`` as JSON-ready Python values (dataclasses as dicts of their fields)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return encode(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def decode(cls: Any, value: Any) -> Any:
    """The ``cls`` value a JSON ``value`` written by ``encode`` stands for."""
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return decode(next(a for a in args if a is not type(None)), value)
    if cls is np.ndarray:
        return _array(value)
    if cls is float:
        return math.nan if value is None else float(value)
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init and f.name in value]
        return cls(**{f.name: decode(hints[f.name], value[f.name]) for f in fields})
    if origin is list:
        return [decode(args[0], v) for v in value] if args else list(value)
    if origin is dict:
        return {k: decode(args[1], v) for k, v in value.items()} if args else dict(value)
    return value


def _array(value: Any) -> np.ndarray:
    flat = list(_leaves(value))
    if flat and all(isinstance(v, bool) for v in flat):
        return np.asarray(value, dtype=bool)
    return np.asarray(_nan_for_null(value), dtype=np.float64)


def _leaves(value: Any):
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _nan_for_null(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return math.nan if value is None else value


def same(a: Any, b: Any) -> bool:
    """Deep equality: dataclasses field by field, arrays by shape, dtype and values, NaN == NaN."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and _array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _array_equal(a: np.ndarray, b: np.ndarray) -> bool:
    nan_ok = a.dtype.kind in "fc"
    return bool(np.array_equal(a, b, equal_nan=nan_ok))
