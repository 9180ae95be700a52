"""Adding a method is one file: ``new-method`` writes it from the template, the registry discovers it
from its file, and it trains under smoke and appears in a rendered table without any other edit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.config import PROJECT_ROOT
from benchmarks.errors import ConfigError
from benchmarks.new_method import create_method


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env=dict(os.environ), timeout=600)


def test_new_method_is_listed_trained_and_rendered(tiny_cohort: Path, mlflow_store: str, tmp_path: Path) -> None:
    name = f"newcomer_{os.getpid()}"
    made = PROJECT_ROOT / "methods" / f"{name}.py", PROJECT_ROOT / "tests" / f"test_method_{name}.py"
    try:
        created = cli("new-method", name, "--title", "Newcomer")
        assert created.returncode == 0, created.stderr
        assert all(path.exists() for path in made)
        assert name in cli("list-methods").stdout
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(made[1]),
                                "tests/test_methods.py", "-k", name],  # its own test and the conformance tests
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        assert tests.returncode == 0, tests.stdout[-2000:]
        data = ["--profile", "smoke", "--data", str(tiny_cohort)]
        run = cli("run", "table2", *data, "--methods", name, "--no-progress")
        assert run.returncode == 0, run.stderr[-2000:]
        report = cli("report", "table2", *data, "--methods", name, "--out", str(tmp_path))
        assert report.returncode == 0, report.stderr[-2000:]
        table = (tmp_path / "table2.md").read_text()
        rows = [line for line in table.splitlines() if line.startswith("| Newcomer")]  # rows carry the title
        assert rows, table
        assert "nan" not in rows[0].lower()
        again = cli("new-method", name)  # never overwrites what a user wrote
        assert again.returncode == 2 and "already exists" in again.stderr
    finally:
        for path in made:
            path.unlink(missing_ok=True)


@pytest.mark.parametrize("bad", ["Upper", "1st", "with-dash", "class", "dhc", "registry"])
def test_new_method_refuses_bad_or_taken_names(bad: str, tmp_path: Path) -> None:
    (tmp_path / "methods").mkdir()
    (tmp_path / "tests").mkdir()
    with pytest.raises(ConfigError, match="new-method"):
        create_method(bad, root=tmp_path)
    assert not list(tmp_path.rglob("*.py"))
