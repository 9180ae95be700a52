"""Errors that name the culprit (file, key or id). The CLI turns them into a message and exit code 2."""


class OrganbenchError(Exception):
    """Base class of every user-facing error."""


class ConfigError(OrganbenchError):
    """A study, profile or method configuration is invalid (unknown key, bad value)."""


class DatasetError(OrganbenchError):
    """A dataset file or split is missing, corrupt or inconsistent."""
