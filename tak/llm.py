"""A minimal OpenAI-compatible chat-completions client (standard library only).

``POST {base_url}/chat/completions`` with the JSON body ``{model, messages, temperature}`` and, when
a key is configured, the header ``Authorization: Bearer KEY``. Configuration comes from the
arguments, else the environment: ``ORGANBENCH_LLM_BASE_URL``, ``ORGANBENCH_LLM_MODEL``,
``ORGANBENCH_LLM_API_KEY`` (falling back to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``).

The API key is never logged, printed, written to a file or put into an exception message; the
client's ``repr`` shows only whether a key is set. Timeouts are in seconds.

>>> client = ChatClient(base_url="http://localhost:8000/v1/", model="m", api_key="sk-secret")
>>> client
ChatClient(base_url='http://localhost:8000/v1', model='m', api_key=<set>, timeout_s=120.0)
>>> "sk-secret" in repr(client) + str(client)
False
"""
from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Sequence

from methods.common.errors import ConfigError, OrganbenchError
from methods.common.urls import public_url

log = logging.getLogger(__name__)

ENV_BASE_URL = ("ORGANBENCH_LLM_BASE_URL", "OPENAI_BASE_URL")
ENV_MODEL = ("ORGANBENCH_LLM_MODEL",)
ENV_API_KEY = ("ORGANBENCH_LLM_API_KEY", "OPENAI_API_KEY")


class LLMError(OrganbenchError):
    """The LLM endpoint failed: HTTP error, timeout, unreachable, or a malformed answer."""


def _first_env(names: Sequence[str], env: Mapping[str, str]) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


class ChatClient:
    """Chat completions against an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, temperature: float = 0.0, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        base_url = base_url or _first_env(ENV_BASE_URL, env)
        model = model or _first_env(ENV_MODEL, env)
        if not base_url:
            raise ConfigError("no LLM base URL: pass --base-url or set ORGANBENCH_LLM_BASE_URL "
                              "(or OPENAI_BASE_URL), e.g. http://localhost:8000/v1")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"LLM base URL {public_url(base_url)[:200]!r} must start with http:// or https://")
        if not model:
            raise ConfigError("no LLM model: pass --model or set ORGANBENCH_LLM_MODEL")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.temperature = float(temperature)
        self.__api_key = api_key or _first_env(ENV_API_KEY, env)  # name-mangled, never in repr/vars dumps

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return f"{self.base_url}/chat/completions"

    @property
    def public_base_url(self) -> str:
        """``base_url`` without user info or query string: safe to log and to write into files."""
        return public_url(self.base_url)

    @property
    def public_url(self) -> str:
        return f"{self.public_base_url}/chat/completions"

    @property
    def has_key(self) -> bool:
        return bool(self.__api_key)

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={self.public_base_url!r}, model={self.model!r}, "
                f"api_key={'<set>' if self.__api_key else '<none>'}, timeout_s={self.timeout_s})")

    __str__ = __repr__

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the API key replaced by ``***``."""
        return text.replace(self.__api_key, "***") if self.__api_key else text

    def chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Send ``messages`` (``{"role", "content"}`` dicts); return the first choice's text."""
        body = json.dumps({"model": self.model, "messages": list(messages),
                           "temperature": self.temperature}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        log.debug("POST %s model=%s messages=%d", self.public_url, self.model, len(messages))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            snippet = self.redact(exc.read()[:300].decode("utf-8", "replace")) if exc.fp else ""
            raise LLMError(f"LLM request to {self.public_url} failed: HTTP {exc.code} {exc.reason}"
                           + (f": {snippet}" if snippet else "")) from None
        except (socket.timeout, TimeoutError):
            raise LLMError(f"LLM request to {self.public_url} timed out after {self.timeout_s:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise LLMError(f"LLM request to {self.public_url} timed out after {self.timeout_s:g} s") from None
            raise LLMError(f"LLM endpoint {self.public_url} unreachable: {self.redact(str(reason))}") from None
        return self._content(raw)

    def _content(self, raw: bytes) -> str:
        try:
            data: Any = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = self.redact(raw[:200].decode("utf-8", "replace"))
            raise LLMError(f"LLM endpoint {self.public_url} returned no chat completion: {snippet!r}") from None
        if not isinstance(content, str):
            raise LLMError(f"LLM endpoint {self.public_url} returned non-text content {type(content).__name__}")
        return content
