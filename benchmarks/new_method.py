"""``python -m benchmarks new-method NAME``: write ``methods/NAME.py`` and ``tests/test_method_NAME.py``
from the templates in ``benchmarks/templates``. The method is discovered from its file (no list to
edit) and passes the conformance tests as written; a newcomer edits its loss, not the plumbing."""
from __future__ import annotations

import keyword
import re
from pathlib import Path

from benchmarks.config import PROJECT_ROOT
from benchmarks.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


def class_name_of(name: str) -> str:
    """``"my_method"`` -> ``"MyMethod"``.

    >>> class_name_of("co_bio_net2")
    'CoBioNet2'
    """
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def create_method(name: str, title: str | None = None, root: Path = PROJECT_ROOT) -> list[Path]:
    """Write the method module and its test under ``root``; returns the two paths.

    Refuses (ConfigError) a name that is not a lower-case Python identifier, that is already registered,
    or whose files exist: nothing a user wrote is overwritten.
    """
    from methods.registry import NOT_METHODS, list_methods
    if not NAME_PATTERN.fullmatch(name) or keyword.iskeyword(name):
        raise ConfigError(f"new-method: {name!r} is not a valid method name (lower case letters, digits and _, "
                          "starting with a letter)")
    if name in NOT_METHODS or name in list_methods():
        raise ConfigError(f"new-method: a method or module named {name!r} already exists")
    module = root / "methods" / f"{name}.py"
    test = root / "tests" / f"test_method_{name}.py"
    for path in (module, test):
        if path.exists():
            raise ConfigError(f"new-method: {path} exists; not overwriting it")
    fields = {"name": name, "class_name": class_name_of(name), "title": title or name}
    module.write_text((TEMPLATES / "method.py.tmpl").read_text().format(**fields))
    test.write_text((TEMPLATES / "test_method.py.tmpl").read_text().format(**fields))
    return [module, test]
