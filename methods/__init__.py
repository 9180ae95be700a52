"""Semi-supervised segmentation methods, one module each, registered by name.

The names below are imported on first use, so that importing a light submodule (``methods.common.errors``,
which every CLI command imports to report a bad input in one line) does not import torch: a typo in a
study name is refused in a fraction of a second instead of after torch has loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from methods.base import Batch, Method, MethodConfig
    from methods.registry import UnknownMethodError, get_method, list_methods, register

_HOME = {"Batch": "methods.base", "Method": "methods.base", "MethodConfig": "methods.base",
         "UnknownMethodError": "methods.registry", "get_method": "methods.registry",
         "list_methods": "methods.registry", "register": "methods.registry"}
__all__ = ["Batch", "Method", "MethodConfig", "UnknownMethodError", "get_method", "list_methods", "register"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'methods' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
