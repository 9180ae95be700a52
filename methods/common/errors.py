"""User-facing error types, shared by the methods, ``tak`` and the harness.

They live here, below both ``methods`` and ``tak`` (whose model code already stands on
``methods.common``), so that neither imports the harness. The harness re-exports them from
``benchmarks.errors`` and adds its own; its CLI turns any :class:`OrganbenchError` into one line
on stderr and exit code 2.
"""


class OrganbenchError(Exception):
    """Base class of every user-facing error; the message names the culprit (file, key or id)."""


class ConfigError(OrganbenchError):
    """A study, profile or method configuration is invalid (unknown key, bad value or type)."""


class DatasetError(OrganbenchError):
    """A dataset file or split is missing, corrupt or inconsistent."""
