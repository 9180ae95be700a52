"""Values of command-line flags shared by the sub-commands (comma-separated lists, seeds)."""
from __future__ import annotations

from benchmarks.errors import ConfigError


def csv_list(value: str | None) -> list[str] | None:
    """``"a,b,a"`` -> ``["a", "b"]`` (order kept, repeats dropped); None or blank -> None."""
    if value is None or value.strip() == "":
        return None
    return list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def seed_list(value: str | None) -> list[int] | None:
    """``--seeds`` as distinct non-negative integers; anything else is a ConfigError naming the flag."""
    items = csv_list(value)
    if items is None:
        return None
    seeds = []
    for item in items:
        if not item.isdigit():
            raise ConfigError(f"--seeds: {item!r} is not a non-negative integer (expected e.g. --seeds 0,1,2)")
        seeds.append(int(item))
    return list(dict.fromkeys(seeds))
