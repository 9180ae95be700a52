"""The dependency order of the architecture, checked on every import of every module (function-level
imports included):

    benchmarks  ->  reports, mlflow_server, methods  ->  tak  ->  methods.common

``benchmarks`` (the harness and CLI) may import every layer; ``reports`` reads MLflow and imports only
itself; ``mlflow_server`` only itself; a method imports methods, ``tak`` (TAK's model code) and
``methods.common``; ``tak`` imports only itself and ``methods.common`` (errors, YAML, URLs); and
``methods.common`` (with ``methods.base``, the method contract) only itself. No module imports one that imports it back (no cycles)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.config import PROJECT_ROOT

FORBIDDEN = ("benchmarks", "reports", "mlflow_server")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, including imports inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", ["methods", "tak"])
def test_package_never_imports_the_harness(package: str) -> None:
    files = sorted((PROJECT_ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    offending = [f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}"
                 for path in files for line, module in _imported_modules(path)
                 if module.split(".")[0] in FORBIDDEN]
    assert offending == []


def test_import_scan_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from benchmarks.data import read_split\n")
    assert (4, "benchmarks.data") in _imported_modules(source)


def test_old_tak_entry_point_names_the_new_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "tak", "encoders"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "python -m benchmarks tak encoders" in proc.stderr


def test_every_algorithm_citation_resolves_inside_the_repository() -> None:
    """Docstrings cite ``docs/algorithms.md §N.N``; each cited section exists there (a heading or a bold
    method entry), and nothing cites the spec outside the repository any more."""
    import re
    page = (PROJECT_ROOT / "docs" / "algorithms.md").read_text()
    anchors = set(re.findall(r"^#+ (\d+(?:\.\d+)?)[ .]", page, re.M)) | set(re.findall(r"\*\*(\d+\.\d+)[ *]", page))
    cited, stale = set(), []
    for folder in ("methods", "benchmarks", "tak", "reports", "mlflow_server", "tests", "docs"):
        for path in (PROJECT_ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".md"):
                continue
            text = path.read_text()
            cited |= {m for m in re.findall(r"docs/algorithms\.md §(\d+(?:\.\d+)?)", text)}
            stale += [f"{path.relative_to(PROJECT_ROOT)}: {m}" for m in re.findall(r"\bspec(?: section)? \d+\.\d+", text)]
    assert cited and sorted(cited - anchors) == []
    assert stale == []


PACKAGES = ("benchmarks", "reports", "mlflow_server", "methods", "tak")
ALLOWED = {  # layer -> the layers it may import (itself always)
    "benchmarks": {"benchmarks", "reports", "mlflow_server", "methods", "methods.common", "tak"},
    "reports": {"reports"},
    "mlflow_server": {"mlflow_server"},
    "methods": {"methods", "methods.common", "tak"},
    "tak": {"tak", "methods.common"},
    "methods.common": {"methods.common"},
}


def _layer(module: str) -> str | None:
    """The layer of a project module; ``methods.base`` (the method contract) belongs to the shared base."""
    if module in ("methods.common", "methods.base") or module.startswith("methods.common."):
        return "methods.common"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def _module_graph() -> dict[str, set[str]]:
    """``{module: the project modules it imports}`` (relative imports resolved, ``from a import b`` as
    ``a.b`` where that is a module, else ``a``)."""
    names = {}
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
            names[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in names.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        graph[module] = {r for t in targets if (r := resolve(t)) and r != module}
    return graph


def test_every_import_follows_the_layer_order() -> None:
    offending = [f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
                 for module, targets in _module_graph().items() for target in sorted(targets)
                 if _layer(target) not in ALLOWED[_layer(module)]]
    assert offending == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the path that closes it (empty: no cycle).

    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b', 'a']]
    >>> find_cycles({"a": {"b"}, "b": set()})
    []
    """
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles() -> None:
    assert find_cycles(_module_graph()) == []


def test_the_checks_see_a_violation() -> None:
    """The layer check flags a report that imports the harness, and the cycle check a cycle."""
    assert _layer("reports.ablation") == "reports" and "benchmarks" not in ALLOWED["reports"]
    assert _layer("methods.common.errors") == "methods.common" and _layer("methods.tak") == "methods"
    assert find_cycles({"benchmarks.runner": {"benchmarks.launchers"}, "benchmarks.launchers": {"benchmarks.runner"}})
