"""YAML for configuration files, strict: a duplicated key is an error (plain YAML keeps the last value
silently), aliases are bounded (an "anchor bomb" of nested aliases expands to gigabytes), and so is
the file's size. A merge key (``<<: *base``) takes a mapping's keys from an anchored one, and the keys
written beside it win. Used for studies, profiles and TAK's knowledge files.

>>> load_yaml("a: 1\\nb: [x, y]\\n", "s.yaml")
{'a': 1, 'b': ['x', 'y']}
>>> load_yaml("base: &b {x: 1, y: 2}\\nvariant: {<<: *b, y: 3}\\n", "s.yaml")["variant"]
{'x': 1, 'y': 3}
>>> load_yaml("a: 1\\na: 2\\n", "s.yaml")
Traceback (most recent call last):
methods.common.errors.ConfigError: s.yaml: line 2: key 'a' appears twice in one mapping
"""
from __future__ import annotations

import copy
import functools
from typing import Any

import yaml

from methods.common.errors import ConfigError

MAX_ALIASES = 100
MAX_BYTES = 1 << 20  # configuration files are a few kB


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and counts aliases."""

    aliases_seen = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name): refused")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": the keys beside it override the base's
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if duplicate:
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.YAMLError):
    pass


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (from ``source``, named in every error) with the rules of the module docstring;
    errors are one-line :class:`ConfigError`s of bounded length. A text parsed before in this process
    is not parsed again (the pure-Python parser takes tens of ms for a study or the knowledge base, read
    by every launch and every TAK network); each caller gets its own copy."""
    return copy.deepcopy(_parse(text, source))


@functools.lru_cache(maxsize=64)
def _parse(text: str, source: str) -> Any:
    if len(text.encode("utf-8", errors="replace")) > MAX_BYTES:
        raise ConfigError(f"{source}: over {MAX_BYTES // 1024} KiB; not a configuration file")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{source}: invalid YAML ({message[:300]})") from None
