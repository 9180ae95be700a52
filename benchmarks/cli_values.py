"""Values of command-line flags shared by the sub-commands (comma-separated lists, seeds)."""
from __future__ import annotations

import argparse

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


def add_cell_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The flags that pick a study's cells: ``--profile``, ``--methods``, ``--seeds``, ``--data``, ``--no-progress``."""
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--methods", help="comma-separated subset (default: the study's)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the study's for the profile)")
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--no-progress", action="store_true")
