"""The reports' error type, importable without MLflow (the CLI catches it before any report runs)."""
from __future__ import annotations


class NoRunsError(LookupError):
    """The store holds no finished run for the query."""
