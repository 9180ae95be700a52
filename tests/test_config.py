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
    for name in ("smoke", "cpu", "paper"):
        profile = load_profile(name)
        assert name in study.seeds and name in study.budget
        assert all(p % 16 == 0 for p in profile.patch)


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
