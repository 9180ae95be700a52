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
