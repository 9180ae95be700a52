"""Adding a method is one file: ``new-method`` writes it from the template, the registry discovers it
from its file, it passes the conformance tests as written, and it trains under smoke and appears in a
rendered table without any other edit."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

import methods.registry as registry
from benchmarks.cli import main
from benchmarks.config import PROJECT_ROOT
from benchmarks.errors import ConfigError
from benchmarks.new_method import create_method


@pytest.fixture
def newcomer():
    """A fresh method name; its files, module and registry entry are removed afterwards."""
    name = f"newcomer_{os.getpid()}"
    made = PROJECT_ROOT / "methods" / f"{name}.py", PROJECT_ROOT / "tests" / f"test_method_{name}.py"
    yield name, made
    for path in made:
        path.unlink(missing_ok=True)
    registry._REGISTRY.pop(name, None)
    for module in (f"methods.{name}", f"test_method_{name}"):
        sys.modules.pop(module, None)


def test_new_method_is_listed_conformant_trained_and_rendered(newcomer: tuple[str, tuple[Path, Path]],
                                                              tiny_cohort: Path, mlflow_store: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    name, made = newcomer
    assert main(["new-method", name, "--title", "Newcomer"]) == 0
    assert all(path.exists() for path in made)
    assert name in registry.builtin_modules()  # discovered from its file, no list edited
    registry._discovered = False  # as a fresh process would: discovery imports the new file
    capsys.readouterr()
    assert main(["list-methods"]) == 0
    assert name in capsys.readouterr().out.split()

    # the test file it wrote, and the conformance tests every method passes
    spec = importlib.util.spec_from_file_location(f"test_method_{name}", made[1])
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    generated.test_unsupervised_loss_by_hand()
    import test_methods as conformance
    conformance.test_two_iterations_finite_and_predict_shape(name)
    conformance.test_same_seed_same_numbers(name)
    conformance.test_checkpoint_round_trip(name)
    conformance.test_unsupervised_term_sends_gradient(name)

    data = ["--profile", "smoke", "--data", str(tiny_cohort)]
    assert main(["run", "table2", *data, "--methods", name, "--no-progress"]) == 0
    assert main(["report", "table2", *data, "--methods", name, "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table2.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| Newcomer")]  # rows carry the title
    assert rows, table
    assert "nan" not in rows[0].lower()
    capsys.readouterr()
    assert main(["new-method", name]) == 2  # never overwrites what a user wrote
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["Upper", "1st", "with-dash", "class", "dhc", "registry"])
def test_new_method_refuses_bad_or_taken_names(bad: str, tmp_path: Path) -> None:
    (tmp_path / "methods").mkdir()
    (tmp_path / "tests").mkdir()
    with pytest.raises(ConfigError, match="new-method"):
        create_method(bad, root=tmp_path)
    assert not list(tmp_path.rglob("*.py"))
