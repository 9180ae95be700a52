"""URLs as they may be shown or stored: without secrets.

>>> public_url("http://alice:s3cret@host:5000/path?token=abc#x")
'http://host:5000/path'
>>> public_url("postgresql://u:pw@db/mlflow")
'postgresql://db/mlflow'
>>> public_url("sqlite:////tmp/mlflow.db")
'sqlite:////tmp/mlflow.db'
"""
from __future__ import annotations

import re


def public_url(url: str) -> str:
    """``url`` without its user info, query string and fragment (passwords, API keys and tokens travel
    there); scheme, host, port and path stay, so a message still says where."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url.split("?")[0].split("#")[0]
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path.split('?')[0].split('#')[0]}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_urls(text: str) -> str:
    """``text`` with every URL in it replaced by :func:`public_url` of it.

    >>> redact_urls("cannot reach http://u:pw@h:1/x?key=k (timeout)")
    'cannot reach http://h:1/x (timeout)'
    """
    return _URL.sub(lambda match: public_url(match.group(0)), text)
