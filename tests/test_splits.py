"""Split consistency: the published AMOS 20% defect is refused with a named correction; subsets
that overlap or leak are errors naming the files."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.data import read_split
from benchmarks.data.nifti import DatasetInfo, check_splits
from benchmarks.errors import DatasetError

DEFINITION = Path(__file__).resolve().parents[1] / "datasets" / "amos"


def test_amos_20p_split_refused_with_a_named_correction() -> None:
    info = DatasetInfo(DEFINITION, "amos", ("background",), (), (-125.0, 275.0), False)
    splits = {n: read_split(info, n, check_files=False)
              for n in ("train", "test", "labeled_20p", "unlabeled_20p", "labeled_20p_corrected", "unlabeled_20p_corrected")}
    with pytest.raises(DatasetError, match="known defect.*split_variant: corrected"):
        check_splits(info, splits, "labeled_20p", "unlabeled_20p")
    check_splits(info, splits, "labeled_20p_corrected", "unlabeled_20p_corrected")
    assert len(splits["labeled_20p_corrected"]) + len(splits["unlabeled_20p_corrected"]) == 216
    del splits["test"]
    splits["test"] = splits["train"][:2]
    with pytest.raises(DatasetError, match="test.txt shares 2"):
        check_splits(info, splits, "labeled_20p_corrected", "unlabeled_20p_corrected")


def test_overlapping_subsets_are_named() -> None:
    info = DatasetInfo(DEFINITION, "amos", ("background",), (), (-125.0, 275.0), False)
    splits = {n: read_split(info, n, check_files=False) for n in ("train", "test", "labeled_5p", "unlabeled_5p")}
    check_splits(info, splits, "labeled_5p", "unlabeled_5p")  # the published 5% split is consistent
    splits["unlabeled_5p"] = splits["unlabeled_5p"] + splits["labeled_5p"][:1]
    with pytest.raises(DatasetError, match="labeled_5p.txt and unlabeled_5p.txt share 1"):
        check_splits(info, splits, "labeled_5p", "unlabeled_5p")


def test_shipped_split_checksums_verify() -> None:
    info = DatasetInfo(DEFINITION, "amos", ("background",), (), (-125.0, 275.0), False)
    sizes = {n: len(read_split(info, n, check_files=False)) for n in ("train", "eval", "test", "labeled_2p",
                                                                        "labeled_5p", "labeled_10p")}
    assert sizes == {"train": 216, "eval": 24, "test": 120, "labeled_2p": 4, "labeled_5p": 10, "labeled_10p": 21}
