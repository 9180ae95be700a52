"""Checking configuration values against dataclass field types, before anything runs.

YAML gives ints, floats, strings, bools, lists and mappings; a config dataclass declares what each
field takes. :func:`check_value` accepts a value that fits its annotation (converting where YAML
cannot say it: an int where a float is expected, a list where a tuple is expected) and otherwise
raises a :class:`~methods.common.errors.ConfigError` that names where the value came from, the
expected type and the value.

>>> check_value(1, float, "lr")
1.0
>>> check_value([2, 2, 1], tuple[int, int, int], "cube_grid")
(2, 2, 1)
>>> check_value("fast", float, "study.yaml: method_overrides.dhc.lr")
Traceback (most recent call last):
...
methods.common.errors.ConfigError: study.yaml: method_overrides.dhc.lr: expected float, got 'fast' (str)
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from methods.common.errors import ConfigError


def describe(annotation: Any) -> str:
    """A short readable name of a type annotation (``int``, ``'batch' | 'instance'``, ``tuple[int, int]``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(describe(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else describe(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` if it fits ``annotation`` (converted: int -> float, list -> tuple), else a ConfigError.

    Args:
        where: what the value is, for the message (``"<file>: <key path>"``); inside mappings and
            lists the message names the entry (``budget.smoke``, ``methods[2]``).
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and isinstance(value, dict):
        key_type, value_type = args or (Any, Any)
        return {check_value(k, key_type, f"{where} (key {k!r})"): check_value(v, value_type, f"{where}.{k}")
                for k, v in value.items()}
    if origin is list and isinstance(value, (list, tuple)):
        return [check_value(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    fits, converted = _fit(value, annotation)
    if not fits:
        raise ConfigError(f"{where}: expected {describe(annotation)}, got {short_repr(value)} ({type(value).__name__})")
    return converted


_NO = (False, None)


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never prints a value whole.

    >>> short_repr("x" * 100, limit=12)
    "'xxxxxxxxx... (102 characters)"
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 2]}... ({len(text)} characters)"


# Ranges of the fields every method config shares (and of the same names in any method's config):
# (lowest, highest, whether the lowest is allowed). A value outside is refused before any run exists.
FIELD_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, 10.0, False), "base_filters": (1, 1024, True), "momentum": (0.0, 1.0, True),
    "weight_decay": (0.0, 1.0, True), "poly_power": (0.0, 10.0, False), "ema_decay": (0.0, 1.0, True),
}


def check_ranges(values: dict[str, Any], source: str) -> None:
    """A ConfigError naming ``source``, the field and its range when a known field is out of range.

    >>> check_ranges({"lr": 0.01, "base_filters": 8}, "cfg")
    >>> check_ranges({"lr": 0.0}, "cfg")
    Traceback (most recent call last):
    ...
    methods.common.errors.ConfigError: cfg.lr: 0.0 is out of range (0.0, 10.0]
    """
    for name, (low, high, low_ok) in FIELD_RANGES.items():
        value = values.get(name)
        if value is None or isinstance(value, bool):
            continue
        if not ((value >= low if low_ok else value > low) and value <= high):
            bracket = "[" if low_ok else "("
            raise ConfigError(f"{source}.{name}: {short_repr(value)} is out of range {bracket}{low}, {high}]")


def _fit(value: Any, annotation: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True, value
    if annotation is type(None) or annotation is None:
        return (True, None) if value is None else _NO
    if origin in (Union, types.UnionType):
        for arg in args:
            fits, converted = _fit(value, arg)
            if fits:
                return True, converted
        return _NO
    if origin is Literal:  # type-exact: True must not pass for 1, nor 1 for 1.0
        return (True, value) if any(type(value) is type(a) and value == a for a in args) else _NO
    if annotation is bool:
        return (True, value) if isinstance(value, bool) else _NO
    if annotation is int:
        return (True, value) if isinstance(value, int) and not isinstance(value, bool) else _NO
    if annotation is float:  # finite: NaN and inf are never a setting (YAML reads .nan / .inf)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return (True, float(value)) if ok else _NO
    if annotation is str:
        return (True, value) if isinstance(value, str) else _NO
    if annotation is Path:
        return (True, Path(value)) if isinstance(value, (str, Path)) else _NO
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return _NO
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            return _NO
        items = [args[0]] * len(value) if origin is list or (args and args[-1] is Ellipsis) else list(args)
        out = []
        for item, item_type in zip(value, items or [Any] * len(value)):
            fits, converted = _fit(item, item_type)
            if not fits:
                return _NO
            out.append(converted)
        return True, tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            return _NO
        key_type, value_type = args or (Any, Any)
        out_dict = {}
        for k, v in value.items():
            k_fits, k_conv = _fit(k, key_type)
            v_fits, v_conv = _fit(v, value_type)
            if not (k_fits and v_fits):
                return _NO
            out_dict[k_conv] = v_conv
        return True, out_dict
    if isinstance(annotation, type):
        return (True, value) if isinstance(value, annotation) else _NO
    return True, value  # an annotation this checker does not understand is not guessed at


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of a dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def check_fields(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Every entry of ``values`` checked against ``cls``'s field of that name (unknown keys are an error
    naming them and the allowed ones); returns the converted values."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(types_)}")
    checked = {k: check_value(v, types_[k], f"{source}.{k}" if source else k) for k, v in values.items()}
    check_ranges(checked, source or "config")
    return checked
