"""Method registry: ``@register("name")`` plus discovery of external packages via entry points.

External packages declare, in their pyproject::

    [project.entry-points."organbench.methods"]
    my_method = "my_package.my_module"

Built-in methods are discovered from the files of the ``methods`` package: every module there
except the shared pieces (:data:`NOT_METHODS`, sub-packages, names starting with ``_``) is imported,
so adding a method is adding one file. Importing a module runs its ``@register`` decorator. A broken
module or plug-in fails loudly.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from methods.base import Method

ENTRY_POINT_GROUP = "organbench.methods"
NOT_METHODS = frozenset({"base", "registry"})
"""Modules of the ``methods`` package that hold shared code, not a method."""

_REGISTRY: dict[str, type[Method]] = {}
_discovered = False
M = TypeVar("M", bound="type[Method]")


class UnknownMethodError(KeyError):
    """Raised for a method name nobody registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def register(name: str, *, title: str | None = None, group: str | None = None, version: str | None = None,
             config: type | None = None) -> Callable[[M], M]:
    """Class decorator registering a :class:`~methods.base.Method` subclass under ``name``, with the
    header every method has: its table ``title``, its ``group`` (lower-bound, general, imbalance,
    fully), its behaviour ``version`` (part of every run key: bump it when what the method computes
    changes) and its ``config`` dataclass. A keyword left out is inherited from the base class."""

    def decorator(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        for attribute, value in (("title", title), ("group", group), ("version", version), ("Config", config)):
            if value is not None:
                setattr(cls, attribute, value)
        _REGISTRY[name] = cls
        return cls

    return decorator


def builtin_modules() -> list[str]:
    """Names of the method modules in the ``methods`` package directory, sorted."""
    package_dir = Path(__file__).resolve().parent
    return sorted(info.name for info in pkgutil.iter_modules([str(package_dir)])
                  if not info.ispkg and not info.name.startswith("_") and info.name not in NOT_METHODS)


def discover() -> None:
    """Import the built-in method modules and every ``organbench.methods`` entry point (once)."""
    global _discovered
    if _discovered:
        return
    for module in builtin_modules():
        importlib.import_module(f"methods.{module}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a plug-in that cannot import is an error, not a silent skip
            raise ImportError(f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP} "
                              f"failed to import: {exc}") from exc
    _discovered = True


def list_methods() -> list[str]:
    """Sorted names of every registered method."""
    discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The class registered as ``name``; :class:`UnknownMethodError` lists the known names."""
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}") from None
