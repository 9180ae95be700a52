"""The dependency rule of the architecture: benchmarks -> methods -> tak; a method or ``tak`` module
never imports the harness (``benchmarks``) or the reports (which read MLflow only)."""
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
