"""MLflow -> pandas: the finished runs of a study's cells, and what else the experiment holds.

A study's cells (method x seed under a profile, each with its run key) are resolved by the harness
and passed in; the reports only read MLflow. A table shows exactly one finished run per cell; any
other finished run in the experiment (an ad-hoc seed, an older configuration, another code or data
version) is listed as not part of the study, never averaged in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import pandas as pd

from reports.errors import NoRunsError  # noqa: F401 -- raised here, imported from here by the reports


@dataclass
class StudyRuns:
    """``runs``: one finished run per study cell that has one (the newest if a cell has several);
    ``others``: the experiment's other finished runs under the profile, with a ``reason`` column;
    ``missing``: the study cells without a finished run (and not diverged); ``cells``: all of the
    study's cells; ``diverged``: the cells whose run diverged (a non-finite loss), each with its
    ``step``."""

    runs: pd.DataFrame
    others: pd.DataFrame
    missing: list[dict[str, object]] = field(default_factory=list)
    cells: list[dict[str, object]] = field(default_factory=list)
    diverged: list[dict[str, object]] = field(default_factory=list)

    def seeds_asked(self, method: str) -> int:
        return sum(c["method"] == method for c in self.cells)


def _all_finished(study: str, profile: str) -> pd.DataFrame:
    if mlflow.get_experiment_by_name(study) is None:
        raise NoRunsError(f"no MLflow experiment {study!r} at {mlflow.get_tracking_uri()}; run the study first")
    runs = mlflow.search_runs(experiment_names=[study], output_format="pandas", max_results=100_000,
                              filter_string=f"attributes.status = 'FINISHED' and tags.profile = '{profile}'")
    if "tags.run_key" in runs:
        runs = runs[runs["tags.run_key"].notna()]
    return runs


def _diverged_steps(study: str, profile: str, run_keys: set[str]) -> dict[str, str]:
    """Run key -> iteration of the divergence, for the diverged runs (FAILED, tagged ``diverged_at_step``)."""
    if not run_keys:
        return {}
    runs = mlflow.search_runs(experiment_names=[study], output_format="pandas", max_results=100_000,
                              filter_string=f"attributes.status = 'FAILED' and tags.profile = '{profile}'")
    if runs.empty or "tags.diverged_at_step" not in runs:
        return {}
    runs = runs[runs["tags.diverged_at_step"].notna() & runs["tags.run_key"].isin(run_keys)]
    return dict(zip(runs["tags.run_key"], runs["tags.diverged_at_step"]))


def study_runs(study: str, profile: str, cells: list[dict[str, object]] | None = None,
               tracking_uri: str | None = None) -> StudyRuns:
    """The finished runs of ``cells`` (dicts with ``method``, ``seed``, ``run_key``) in experiment
    ``study``; raises :class:`NoRunsError` when none of them has one.

    ``cells=None`` takes the newest finished run per (method, seed) (for a store whose study cannot
    be resolved; the CLI always passes the cells).
    """
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    runs = _all_finished(study, profile)
    where = f"at {mlflow.get_tracking_uri()}"
    if runs.empty:
        raise NoRunsError(f"no finished run of study {study!r} with profile {profile!r} {where}")
    runs = runs.sort_values("start_time")
    if cells is None:
        mine = runs.groupby(["tags.method", "tags.seed"]).tail(1)
        others = runs.drop(mine.index).assign(reason="older run of the same cell")
        return StudyRuns(mine.reset_index(drop=True), others.reset_index(drop=True))
    keys = {str(c["run_key"]) for c in cells}
    in_study = runs[runs["tags.run_key"].isin(keys)]
    mine = in_study.groupby("tags.run_key").tail(1)  # duplicates (older versions' races): the newest
    others = runs.drop(mine.index).copy()
    iterations = others["tags.iterations"] if "tags.iterations" in others else pd.Series([""] * len(others),
                                                                                        index=others.index)
    others["reason"] = [why_not_in_study(cells, key, m, s, it) for key, m, s, it in
                        zip(others["tags.run_key"], others["tags.method"], others["tags.seed"], iterations)]
    missing = [c for c in cells if str(c["run_key"]) not in set(mine["tags.run_key"])]
    steps = _diverged_steps(study, profile, {str(c["run_key"]) for c in missing})
    diverged = [{**c, "step": steps[str(c["run_key"])]} for c in missing if str(c["run_key"]) in steps]
    missing = [c for c in missing if str(c["run_key"]) not in steps]
    if mine.empty:
        hint = (f" ({len(others)} other finished run(s) there belong to another configuration, seed, dataset "
                f"folder or code version: if the runs used --data DIR, pass the same --data to the report)"
                if len(others) else "")
        raise NoRunsError(f"none of the {len(cells)} cells of study {study!r} (profile {profile!r}) has a finished "
                          f"run {where}{hint}; run the study first")
    # a fixed order (not the order runs finished in): the aggregates are then bit-identical whatever
    # launcher trained the cells
    order = mine.assign(_seed=pd.to_numeric(mine["tags.seed"], errors="coerce")).sort_values(
        ["tags.method", "_seed", "tags.run_key"]).index
    return StudyRuns(mine.loc[order].reset_index(drop=True), others.reset_index(drop=True), missing, list(cells),
                     diverged)


def finished_runs(study: str, profile: str, tracking_uri: str | None = None,
                  cells: list[dict[str, object]] | None = None) -> pd.DataFrame:
    """The finished runs of the study's cells (see :func:`study_runs`), as one frame."""
    return study_runs(study, profile, cells, tracking_uri).runs


def why_not_in_study(cells: list[dict[str, object]], run_key: str, method: str, seed: str,
                     iterations: object) -> str:
    """Why a finished run is not one of ``cells`` (a budget study has several budgets per method and seed).

    >>> cells = [{"method": "dhc", "seed": "0", "run_key": k, "iterations": i} for k, i in (("a", 150), ("b", 300))]
    >>> why_not_in_study(cells, "c", "dhc", "0", "600"), why_not_in_study(cells, "d", "dhc", "0", "300")
    ('another budget (the budget check)', 'another configuration, data or code version of a study cell')
    >>> why_not_in_study(cells, "a", "dhc", "0", "150"), why_not_in_study(cells, "e", "dhc", "1", "300")
    ('duplicate finished run of a study cell', 'seed not in the study')
    """
    if run_key in {str(c["run_key"]) for c in cells}:
        return "duplicate finished run of a study cell"
    mine = [c for c in cells if (str(c["method"]), str(c["seed"])) == (method, seed)]
    budgets = {str(c["iterations"]) for c in mine if c.get("iterations")}
    if budgets and iterations == iterations and str(iterations) not in budgets:  # (NaN != NaN: no tag)
        return "another budget (the budget check)"
    if mine:
        return "another configuration, data or code version of a study cell"
    return "seed not in the study" if method in {str(c["method"]) for c in cells} else "method not in the study"


def others_note(selected: StudyRuns) -> list[str]:
    """Footnote lines: the study cells that diverged or are not finished yet, and the runs that are
    not part of the study."""
    lines = []
    several_budgets = len({c.get("iterations") for c in selected.cells}) > 1

    def name(cell: dict[str, object]) -> str:
        return f"{cell['method']} seed {cell['seed']}" + (f" at {cell['iterations']} iterations" if several_budgets
                                                          else "")
    if selected.diverged:
        names = ", ".join(f"{name(c)} (at iteration {c['step']})" for c in selected.diverged)
        lines.append(f"Diverged, a non-finite loss ({len(selected.diverged)} of {len(selected.cells)} cells, "
                     f"not shown): {names}.")
    if selected.missing:
        names = ", ".join(name(c) for c in selected.missing)
        lines.append(f"Not finished yet ({len(selected.missing)} of {len(selected.cells)} cells): {names}.")
    if len(selected.others):
        groups = selected.others.groupby(["reason", "tags.method"])["tags.seed"].apply(
            lambda s: ", ".join(sorted(set(s), key=lambda x: (len(x), x))))
        parts = [f"{method} (seeds {seeds}): {reason}" for (reason, method), seeds in groups.items()]
        lines.append(f"Not part of this study ({len(selected.others)} finished run(s) in the experiment, not shown): "
                     + "; ".join(parts) + ".")
    return lines
