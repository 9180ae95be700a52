"""External packages register methods through the ``organbench.methods`` entry-point group."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from methods import registry

PLUGIN = '''
from methods.registry import register
from methods.supervised import Supervised


@register("plugin_demo")
class PluginDemo(Supervised):
    title = "Plug-in demo"
'''


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "organbench_plugin_demo.py").write_text(PLUGIN)
    dist = tmp_path / "organbench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: organbench-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[organbench.methods]\nplugin_demo = organbench_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_discovered", False)
    yield tmp_path
    registry._REGISTRY.pop("plugin_demo", None)
    sys.modules.pop("organbench_plugin_demo", None)
    registry._discovered = False


def test_entry_point_method_is_listed_and_built(plugin_on_path: Path) -> None:
    assert "plugin_demo" in registry.list_methods()
    cls = registry.get_method("plugin_demo")
    assert cls.title == "Plug-in demo" and cls.name == "plugin_demo"


def test_broken_plugin_fails_loudly(plugin_on_path: Path) -> None:
    (plugin_on_path / "organbench_plugin_demo.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ImportError, match="plugin_demo.*boom"):
        registry.list_methods()


def test_duplicate_name_rejected() -> None:
    from methods.supervised import Supervised
    with pytest.raises(ValueError, match="already registered"):
        registry.register("supervised")(type("Other", (Supervised,), {}))


def test_builtin_methods_carry_their_header_in_register() -> None:
    """Every built-in method declares title, group, version and config in ``@register(...)`` (one line
    per method instead of a repeated five-line header), and each registered class has them."""
    import ast
    for module in registry.builtin_modules():
        path = Path(registry.__file__).resolve().parent / f"{module}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(getattr(d, "func", None), "id", "") == "register"
                                                      for d in node.decorator_list):
                call = next(d for d in node.decorator_list if getattr(getattr(d, "func", None), "id", "") == "register")
                assert {k.arg for k in call.keywords} == {"title", "group", "version", "config"}, module
                assigned = {t.id for s in node.body if isinstance(s, ast.Assign) for t in s.targets
                            if isinstance(t, ast.Name)}
                assert not assigned & {"title", "group", "version", "Config"}, module
    for name in registry.list_methods():
        cls = registry.get_method(name)
        assert cls.title and cls.group in ("lower-bound", "general", "imbalance", "fully") and cls.version
        assert cls.Config is not None and cls.name == name
