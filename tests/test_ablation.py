"""Ablation studies (Tables 5, 7, 8, 9): variants of TAK trained through the CLI and rendered beside the
published values; variants whose inputs are absent are listed, not dropped silently."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import STUDIES_DIR, load_study
from benchmarks.errors import ConfigError


@pytest.mark.parametrize("name", ["ablation-prompt", "ablation-lambda-c", "ablation-lambda-n", "ablation-encoder"])
def test_ablation_studies_cover_the_published_rows(name: str) -> None:
    study = load_study(name)
    published = pd.read_csv(Path(__file__).resolve().parents[1] / "reports" / "published" / study.published["file"])
    keys = study.published["key"]
    ours = {tuple(study.variants[m]["value"][k] for k in keys) for m in study.methods}
    for _, row in published.iterrows():
        assert tuple(row[k] for k in keys) in ours, f"{name}: published row {dict(row[keys])} has no variant"
    assert all(study.variants[m]["method"] == "tak" for m in study.methods)


def test_variant_with_unknown_key_is_named(tmp_path: Path) -> None:
    raw = yaml.safe_load((STUDIES_DIR / "ablation-lambda-c.yaml").read_text())
    raw["variants"]["tak-lc0"]["overides"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"variants.tak-lc0.*overides"):
        load_study(str(path))


def test_lambda_c_sweep_end_to_end(tiny_cohort: Path, mlflow_store: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from methods import get_method
    tak = get_method("tak")
    original = tak.train_step

    def diverging(self, batch, step):  # type: ignore[no-untyped-def]  # as lambda_c = 10 does on the cpu profile
        logs = original(self, batch, step)
        return {**logs, "loss": float("inf")} if self.config.contrast_weight == 10 and step == 1 else logs

    monkeypatch.setattr(tak, "train_step", diverging)
    assert main(["run", "ablation-lambda-c", "--profile", "smoke", "--data", str(tiny_cohort), "--no-progress",
                 "--methods", "tak-lc0,tak-lc0.1,tak-lc10"]) == 0
    runs = mlflow.search_runs(experiment_names=["ablation-lambda-c"], filter_string="attributes.status = 'FINISHED'")
    runs = runs[runs["tags.run_key"].notna()]
    assert sorted(runs["tags.method"]) == ["tak-lc0", "tak-lc0.1"]
    assert set(runs["tags.base_method"]) == {"tak"} and runs["tags.run_key"].nunique() == 2
    values = {m: json.loads(v) for m, v in zip(runs["tags.method"], runs["tags.variant_value"])}
    assert values == {"tak-lc0": {"lambda_c": 0}, "tak-lc0.1": {"lambda_c": 0.1}}
    assert set(runs["params.method_config.contrast_weight"]) == {"0.0", "0.1"}  # a float field
    assert runs["tags.text_encoder_sha256"].notna().all() and runs["tags.knowledge_sha256"].notna().all()
    out = tmp_path / "out"
    assert main(["report", "ablation-lambda-c", "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(out)]) == 0
    md = (out / "ablation-lambda-c.md").read_text()
    assert "SYNTHETIC" in md and "Published (TAK paper" in md and "70.20" in md
    frame = pd.read_csv(out / "ablation-lambda-c.csv", index_col=0)
    assert frame.loc["tak-lc0", "status"] == "finished" and frame.loc["tak-lc5", "status"] == "not run yet"
    assert frame.loc["tak-lc10", "status"] == "diverged (iteration 1)" and pd.isna(frame.loc["tak-lc10", "Dice All"])
    assert "Diverged, a non-finite loss (1 of 8 cells, not shown): tak-lc10 seed 0 (at iteration 1)." in md
    assert frame.loc[["tak-lc0", "tak-lc0.1"], "Dice All"].notna().all()
    assert (out / "ablation-lambda-c.png").stat().st_size > 10_000


def test_encoder_ablation_lists_absent_weights(tiny_cohort: Path, mlflow_store: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ORGANBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    assert main(["run", "ablation-encoder", "--profile", "smoke", "--data", str(tiny_cohort), "--no-progress",
                 "--methods", "tak-minilm,tak-biomedclip"]) == 0
    printed = capsys.readouterr().out
    assert "[absent] tak-biomedclip" in printed and "BiomedCLIP" in printed
    runs = mlflow.search_runs(experiment_names=["ablation-encoder"], filter_string="attributes.status = 'FINISHED'")
    assert sorted(runs.loc[runs["tags.run_key"].notna(), "tags.method"]) == ["tak-minilm"]
    out = tmp_path / "out"
    assert main(["report", "ablation-encoder", "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "ablation-encoder.csv", index_col=0)
    assert frame.loc["tak-biomedclip", "status"].startswith("inputs absent")
    assert "inputs absent" in (out / "ablation-encoder.md").read_text()
