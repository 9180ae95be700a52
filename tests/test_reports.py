"""Every report artifact rendered from a real (smoke) study in a fresh MLflow store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.cli import main
from reports.statistics import bootstrap_ci, paired_wilcoxon
from reports.tables import RenderedTable, ranks


@pytest.fixture(scope="module")
def store(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reports")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    assert main(["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "fully,supervised,cps",
                 "--no-progress"]) == 0
    assert main(["run", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--methods", "supervised",
                 "--seeds", "1", "--no-progress"]) == 0  # ad hoc: smoke asks for seed 0
    assert main(["run", "table6", "--profile", "paper", "--methods", "supervised,cps,dhc,ga,tak"]) == 0
    assert main(["data", "stats", str(tiny_cohort), "--out", str(root / "out" / "data")]) == 0
    yield root
    mp.undo()


def test_table_formats_and_statistics(store: Path, tiny_cohort: Path) -> None:
    out = store / "out" / "table2"
    assert main(["report", "table2", "--profile", "smoke", "--data", str(tiny_cohort), "--out", str(out)]) == 0
    md = (out / "table2.md").read_text()
    assert "95% CI" in md and "p vs" in md and "**" in md and "SYNTHETIC" in md
    assert "Published (TAK paper, Table 2" in md
    tex = (out / "table2.tex").read_text()
    assert "\\begin{table}" in tex and "\\textbf{" in tex
    numbers = pd.read_csv(out / "table2.csv", header=[0, 1], index_col=0)
    assert list(numbers.index) == ["V-Net (fully)", "V-Net (labeled only)", "CPS"]
    assert numbers[("seeds", "finished")].tolist() == [1, 1, 1]  # the ad-hoc seed 1 is not averaged in
    assert "Not part of this study (1 finished run(s)" in md and "supervised (seeds 1): seed not in the study" in md
    flagged = numbers[("flag", "all_background")].fillna("")
    for method in flagged[flagged != ""].index:  # e.g. CPS after 12 smoke iterations: shown, never marked
        assert f"{method} †" in md and numbers.loc[method, ("asd", "All")] != numbers.loc[method, ("asd", "All")]
    assert numbers[("dice_all_ci", "low")].notna().all()
    assert (out / "table2.png").stat().st_size > 20_000
    import torch  # the runs were trained in this process: the table names its machine
    threads = torch.get_num_threads()
    machine = (f"{torch.backends.cpu.get_cpu_capability()} CPU, {threads} thread{'s' if threads != 1 else ''}, "
               f"torch {torch.__version__}")
    assert f"- **computed on**: {machine}" in md


@pytest.mark.parametrize("method", ["DHC", "GA", "TAK"])
def test_cost_table_matches_published(store: Path, method: str) -> None:
    """Params within 2 % of Table 6 (one trained network with its heads) and FLOPs within 2 % (every
    network kept, 2 FLOPs per multiply-add, one 1x1x96^3 window)."""
    out = store / "out" / "table6"
    assert main(["report", "table6", "--profile", "paper", "--out", str(out)]) == 0
    md = (out / "table6.md").read_text()
    agreement = md.split("## Agreement with the published figures")[1]
    row = next(line for line in agreement.splitlines() if line.startswith(f"| {method} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    params_ratio, flops_ratio = float(cells[3]), float(cells[6])
    assert abs(params_ratio - 1) < 0.02 and abs(flops_ratio - 1) < 0.02


def test_figures_and_index(store: Path, tiny_cohort: Path) -> None:
    out = store / "out"
    data = ["--data", str(tiny_cohort)]
    assert main(["figure", "fig6", "--study", "table2", "--profile", "smoke", *data, "--out", str(out / "fig6")]) == 0
    assert main(["figure", "fig1", "--study", "table2", "--profile", "smoke", *data, "--out", str(out / "fig1")]) == 0
    fig1 = pd.read_csv(out / "fig1" / "fig1.csv")
    assert len(fig1) == 15 and fig1["hull"].notna().sum() > 10
    from reports.index import render_index
    page = render_index(out).read_text()
    for link in ("table2/table2.md", "table6/table6.png", "fig1/fig1.png", "fig6/fig6.png"):
        assert f'href="{link}"' in page


def test_bootstrap_and_wilcoxon() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(50, 5, 60)
    lo, hi = bootstrap_ci(a)
    assert lo < a.mean() < hi and hi - lo < 4
    assert paired_wilcoxon(a, a + 3 + rng.normal(0, 1, 60)) < 1e-6
    assert np.isnan(paired_wilcoxon(a, a))


def test_ranks_mark_best_and_second_with_ties() -> None:
    mean = pd.DataFrame({"All": [50.0, 60.0, 55.0], "Es": [0.0, 0.0, 0.0], "RAG": [25.0, 0.0, 0.0]},
                        index=["a", "b", "c"])
    table = RenderedTable("dice", mean, mean * 0, {}, pd.Series(["g"] * 3, index=mean.index), True)
    marks = ranks(table)
    assert marks["All"].tolist() == [0, 1, 2] and marks["Es"].tolist() == [0, 0, 0]
    assert marks["RAG"].tolist() == [1, 0, 0]  # the tied bottom is not "second best"
    asd = RenderedTable("asd", mean, mean * 0, {}, pd.Series(["g"] * 3, index=mean.index), False)
    assert ranks(asd)["All"].tolist() == [1, 0, 2]


def _runs_frame(rows: dict[str, dict[str, float]], all_background: dict[str, int]) -> pd.DataFrame:
    """A search_runs-like frame: one run per method with Dice and ASD on two organs."""
    organs = ["liver", "pancreas"]
    records = []
    for method, values in rows.items():
        record = {"tags.method": method, "tags.method_title": method, "tags.method_group": "general", "tags.seed": "0",
                  "tags.organs": ",".join(organs), "tags.large_organs": "liver", "tags.git_commit": "abc",
                  "tags.git_dirty": "false", "tags.dataset_kind": "synthetic", "tags.dataset": "d",
                  "params.labeled_ratio": "0.05", "tags.profile": "smoke", "tags.protocol": "dhc",
                  "tags.asd_direction": "pred_to_gt", "tags.asd_units": "voxel", "tags.test_cases": "10",
                  "tags.test_cases_total": "10", "metrics.test/cases_all_background": all_background.get(method, 0)}
        for organ in organs:
            record[f"metrics.test/dice/{organ}"] = values["dice"]
            record[f"metrics.test/asd/{organ}"] = values["asd"]
        records.append(record)
    return pd.DataFrame(records)


def test_an_all_background_row_is_flagged_and_never_marked_best() -> None:
    from reports.tables import NOT_MEANINGFUL, build_table, to_frame
    runs = _runs_frame({"Collapsed": {"dice": 99.0, "asd": 0.0}, "A": {"dice": 60.0, "asd": 5.0},
                        "B": {"dice": 40.0, "asd": 9.0}}, {"Collapsed": 3})
    dice, asd = build_table(runs, "dice"), build_table(runs, "asd")
    assert set(dice.flagged) == {"Collapsed"} and "3 of 10" in dice.flagged["Collapsed"]
    for table in (dice, asd):
        marks = ranks(table)
        assert (marks.loc["Collapsed"] == 0).all()  # never best nor second, in any column
        assert (marks.loc["A"] == 1).all()  # the best of the others (ASD 5 beats 9, not the collapsed 0)
    cells = to_frame(asd, "markdown")
    assert list(cells.index) == ["A", "B", "Collapsed †"]  # same group: alphabetical
    assert (cells.loc["Collapsed †", ["All", "Li", "Pa"]] == NOT_MEANINGFUL).all()
    assert cells.loc["A", "All"] == "**5.00**"
    # without the flag (an older run without the count) the reference rule would make it best
    unflagged = build_table(runs.drop(columns="metrics.test/cases_all_background"), "asd")
    assert ranks(unflagged).loc["Collapsed", "All"] == 1


def test_a_table_names_the_machines_its_rows_were_trained_on() -> None:
    """Float results depend on the CPU kind and the thread count: mixed machines are named per method."""
    from reports.tables import build_table
    runs = _runs_frame({"A": {"dice": 60.0, "asd": 5.0}, "B": {"dice": 40.0, "asd": 9.0}}, {})
    assert build_table(runs, "dice").header["computed on"] == "not recorded (runs before the machine was recorded)"
    runs["tags.torch_version"], runs["tags.accelerator"] = "2.14.1", ["none", "NVIDIA H200"]
    runs["tags.cpu_capability"], runs["tags.torch_threads"] = "AVX2", ["1", "16"]
    assert build_table(runs, "dice").header["computed on"] == ("A: AVX2 CPU, 1 thread, torch 2.14.1; "
                                                              "B: NVIDIA H200, torch 2.14.1")
    runs["tags.accelerator"] = "none"
    runs["tags.torch_threads"] = "2"
    assert build_table(runs, "dice").header["computed on"] == "AVX2 CPU, 2 threads, torch 2.14.1"


def test_training_curves_of_a_study(store: Path, tiny_cohort: Path, capsys: pytest.CaptureFixture) -> None:
    """``figure curves``: every run's logged history of one metric, per method, from MLflow; a metric
    no run logged (the location loss, without a magic-cube method) is one line and exit 1."""
    import mlflow
    out = store / "out" / "curves"
    data = ["--data", str(tiny_cohort)]
    assert main(["figure", "curves", "--metric", "loss", "--study", "table2", "--profile", "smoke", *data,
                 "--out", str(out)]) == 0
    frame = pd.read_csv(out / "curves_loss.csv")
    assert sorted(frame["method"].unique()) == ["CPS", "V-Net (fully)", "V-Net (labeled only)"]
    run_id = frame["run_id"].iloc[0]
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "train/loss")
    mine = frame[frame["run_id"] == run_id]
    assert mine["step"].tolist() == sorted(p.step for p in history)  # the whole curve, in order
    assert mine["cubes"].isna().all()  # no cube grid outside the magic-cube methods
    assert (out / "curves_loss.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["figure", "curves", "--study", "table2", "--profile", "smoke", *data, "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train/loss_loc" in err[0]


def test_location_loss_curve_has_the_uniform_guess_lines(tiny_cohort: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A MagicNet run under smoke (2 x 1 x 1 cubes): its location loss is drawn with cubes = 2, and the
    first logged value sits near ln 2 (an untrained head guesses about uniformly)."""
    from reports.curves import cube_count, uniform_guess_loss
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = ["--data", str(tiny_cohort)]
    assert main(["run", "table2", "--profile", "smoke", *data, "--methods", "magicnet", "--no-progress"]) == 0
    assert main(["figure", "curves", "--study", "table2", "--profile", "smoke", *data, "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "curves_loss_loc.csv")
    assert set(frame["cubes"]) == {2} and cube_count("[2, 1, 2]") == 4 and cube_count("") is None
    first = frame.sort_values("step")["value"].iloc[0]
    assert abs(first - uniform_guess_loss(2)) < 0.5
