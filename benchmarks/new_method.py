"""``python -m benchmarks new-method NAME``: write ``methods/NAME.py`` and ``tests/test_method_NAME.py``
from the templates in ``benchmarks/templates``. The method is discovered from its file (no list to
edit) and passes the conformance tests as written; a newcomer edits its loss, not the plumbing."""
from __future__ import annotations

import ast
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
    that names a module or package of ``methods/`` (``common``), or whose files exist: nothing a user
    wrote is overwritten. The title is written as a Python string literal (any quotes or backslashes in
    it stay text); a title with control characters, or over 80 characters, is refused. The module is
    parsed before it is written: no command of the suite can be broken by what ``new-method`` writes.
    """
    from methods.registry import NOT_METHODS, list_methods
    if not NAME_PATTERN.fullmatch(name) or keyword.iskeyword(name):
        raise ConfigError(f"new-method: {name!r} is not a valid method name (lower case letters, digits and _, "
                          "starting with a letter)")
    if name in NOT_METHODS or name in list_methods() or (root / "methods" / name).exists():
        raise ConfigError(f"new-method: a method or module named {name!r} already exists")
    title = name if title is None else title
    if not title.strip() or len(title) > 80 or any(not ch.isprintable() for ch in title):
        raise ConfigError("new-method: --title must be one line of printable text, at most 80 characters")
    module = root / "methods" / f"{name}.py"
    test = root / "tests" / f"test_method_{name}.py"
    for path in (module, test):
        if path.exists():
            raise ConfigError(f"new-method: {path} exists; not overwriting it")
    fields = {"name": name, "class_name": class_name_of(name), "title_literal": repr(title),
              "title_doc": title.replace("\\", "\\\\").replace('"', '\\"')}
    texts = {module: (TEMPLATES / "method.py.tmpl").read_text().format(**fields),
             test: (TEMPLATES / "test_method.py.tmpl").read_text().format(**fields)}
    for path, text in texts.items():
        ast.parse(text, str(path))  # a template defect fails here, before anything is written
    for path, text in texts.items():
        path.write_text(text)
    return [module, test]
