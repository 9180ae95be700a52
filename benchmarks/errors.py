"""Errors that name the culprit (file, key or id). The CLI turns them into a message and exit code 2.

The base types live in :mod:`methods.common.errors` so that methods and ``tak`` can raise them
without importing the harness; the harness-only ones are defined here.
"""
from methods.common.errors import ConfigError, DatasetError, OrganbenchError

__all__ = ["ConfigError", "DatasetError", "OrganbenchError", "TrackingError"]


class TrackingError(OrganbenchError):
    """The MLflow tracking store cannot be used (server not answering, store not writable)."""
