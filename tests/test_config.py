"""Profiles and study files are strict: typos are errors that name the key and the file."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.config import STUDIES_DIR, config_hash, load_profile, load_study
from benchmarks.errors import ConfigError


def test_shipped_studies_and_profiles_load() -> None:
    study = load_study("table2")
    assert study.labeled_ratio == 0.05 and study.dataset == "amos"
    assert {"supervised", "fully", "mean_teacher"} <= set(study.methods)
    for name in ("smoke", "cpu", "cpu-long", "paper"):
        profile = load_profile(name)
        assert name in study.seeds and name in study.budget
        assert all(p % 16 == 0 for p in profile.patch)


def test_cpu_long_is_the_cpu_profile_with_its_schedule_only() -> None:
    """`cpu-long` takes everything from `cpu` (a YAML merge key) but the rate scale and the held peak,
    and table2 and the budget check give it the same budget (its B)."""
    import dataclasses

    cpu, long = load_profile("cpu"), load_profile("cpu-long")
    changed = {f.name for f in dataclasses.fields(cpu) if getattr(cpu, f.name) != getattr(long, f.name)}
    assert changed == {"name", "description", "lr_scale", "hold_fraction"}
    assert (long.lr_scale, long.hold_fraction) == (5.0, 0.7)
    assert load_study("table2").budget["cpu-long"] == load_study("budget-check").budget["cpu-long"] == 1600


def write_study(tmp_path: Path, **changes: object) -> Path:
    raw = yaml.safe_load((STUDIES_DIR / "table2.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_typo_key_names_key_and_file(tmp_path: Path) -> None:
    path = write_study(tmp_path, seedz=[0])
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    assert "seedz" in str(info.value) and str(path) in str(info.value)


def test_missing_key_and_bad_ratio(tmp_path: Path) -> None:
    raw = yaml.safe_load((STUDIES_DIR / "table2.yaml").read_text())
    del raw["budget"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="missing key.*budget"):
        load_study(str(path))
    with pytest.raises(ConfigError, match="labeled_ratio"):
        load_study(str(write_study(tmp_path, labeled_ratio=5)))


def test_invalid_yaml_and_unknown_names(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_study(str(path))
    with pytest.raises(ConfigError, match="unknown study 'tabel2'.*table2"):
        load_study("tabel2")
    with pytest.raises(ConfigError, match="unknown profile 'gpu'"):
        load_profile("gpu")


def test_config_hash_is_stable_and_sensitive() -> None:
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_lr_scale_multiplies_every_methods_rate_and_is_in_the_key(tiny_cohort: Path) -> None:
    import dataclasses

    from benchmarks.plan import StudyPlan
    from methods.registry import get_method

    study, smoke = load_study("table2"), load_profile("smoke")
    assert smoke.lr_scale == 1.0 and load_profile("cpu").lr_scale == 20.0
    cells = {}
    for scale in (1.0, 10.0):
        profile = dataclasses.replace(smoke, lr_scale=scale)
        plan = StudyPlan(study, profile, methods=["dhc", "ga"], data_dir=tiny_cohort, progress=False)
        cells[scale] = {c.method: c for c in plan.cells()}
    for method in ("dhc", "ga"):
        published = get_method(method).Config().lr   # DHC family 0.03, MagicNet family 0.01
        assert cells[1.0][method].method_config["lr"] == pytest.approx(published)
        assert cells[10.0][method].method_config["lr"] == pytest.approx(10 * published)
        assert cells[1.0][method].run_key != cells[10.0][method].run_key
    assert cells[1.0]["dhc"].method_config["lr"] != cells[1.0]["ga"].method_config["lr"]


def test_a_non_positive_lr_scale_names_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.config as config

    raw = yaml.safe_load(config.PROFILES_FILE.read_text())
    raw["smoke"]["lr_scale"] = 0
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(config, "PROFILES_FILE", path)
    with pytest.raises(ConfigError, match=f"{path}:smoke: lr_scale 0"):
        load_profile("smoke")


def test_the_cost_study_counts_the_configuration_a_run_trains(tiny_cohort: Path) -> None:
    """Table 6's cells and Table 2's cells resolve a method's configuration through one function:
    under the cpu profile both carry the profile's overrides and the scaled learning rate."""
    import dataclasses

    from benchmarks.cost_study import cost_cells
    from benchmarks.plan import StudyPlan

    cpu = load_profile("cpu")
    trained = {c.method: c.method_config for c in
               StudyPlan(load_study("table2"), cpu, methods=["dhc", "magicnet"], data_dir=tiny_cohort,
                         progress=False).cells()}
    counted = {c["method"]: dataclasses.asdict(c["config"]) for c in cost_cells(load_study("table6"), cpu,
                                                                                  ["dhc", "magicnet"])}
    assert counted == trained
    assert counted["dhc"]["lr"] == pytest.approx(cpu.lr_scale * 0.03)  # DHC's published 0.03, scaled


def test_a_configuration_text_is_parsed_once_and_every_caller_gets_its_own_copy() -> None:
    """Studies, profiles and the knowledge base are read by every launch: a text seen before is not
    parsed again, and changing what one caller got changes nothing for the next."""
    from methods.common import strict_yaml
    text = "a: {b: [1, 2]}\nc: 3\n# parsed once\n"
    before = strict_yaml._parse.cache_info().misses
    first = strict_yaml.load_yaml(text, "x.yaml")
    first["a"]["b"].append(99)
    second = strict_yaml.load_yaml(text, "x.yaml")
    assert second == {"a": {"b": [1, 2]}, "c": 3}
    assert strict_yaml._parse.cache_info().misses == before + 1
    with pytest.raises(ConfigError, match="appears twice"):
        strict_yaml.load_yaml("a: 1\na: 2\n", "dup.yaml")
    with pytest.raises(ConfigError, match="appears twice"):  # an error is raised again, not remembered as a value
        strict_yaml.load_yaml("a: 1\na: 2\n", "dup.yaml")
