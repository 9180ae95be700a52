"""Split lists of the synthetic cohorts: the published sizes, nested labeled subsets, and where the
MRI-like subjects go (as many in each list as in the published AMOS list)."""
from __future__ import annotations

import numpy as np

# Published split sizes (docs/algorithms.md §2.2/2.3): AMOS train 216 (labeled 4/10/21/38 at 2/5/10/20 %), eval 24,
# test 120; Synapse train 20 (labeled 2/4/8 at 10/20/40 %), eval 4, test 6.
AMOS_SPLIT_SIZES = {"train": 216, "eval": 24, "test": 120}
AMOS_LABELED = {2: 4, 5: 10, 10: 21, 20: 38}
SYNAPSE_SPLIT_SIZES = {"train": 20, "eval": 4, "test": 6}
SYNAPSE_LABELED = {10: 2, 20: 4, 40: 8}
# MRI scans in each list of the published AMOS split (datasets/amos/splits: ids >= 500 are MRI;
# tests/test_data.py recounts them). The labeled 5 % holds 3 MRI of 10, the 2 % none.
AMOS_MRI_COUNTS = {"train": 34, "eval": 6, "test": 20,
                   "labeled_2p": 0, "labeled_5p": 3, "labeled_10p": 5, "labeled_20p": 6}


def synthetic_split_ids(sizes: dict[str, int] = AMOS_SPLIT_SIZES,
                        labeled_counts: dict[int, int] = AMOS_LABELED) -> dict[str, list[str]]:
    """Split lists with the published sizes (train/eval/test and nested labeled/unlabeled subsets)."""
    ids = [f"syn_{i:04d}" for i in range(1, sum(sizes.values()) + 1)]
    train, rest = ids[:sizes["train"]], ids[sizes["train"]:]
    splits = {"train": train, "eval": rest[:sizes["eval"]], "test": rest[sizes["eval"]:]}
    order = np.random.default_rng(0).permutation(len(train))  # labeled subsets are nested, as real practice
    for percent, n in labeled_counts.items():
        labeled = sorted(train[i] for i in order[:n])
        splits[f"labeled_{percent}p"] = labeled
        splits[f"unlabeled_{percent}p"] = [c for c in train if c not in set(labeled)]
    return splits


def modality_plan(splits: dict[str, list[str]], mri_counts: dict[str, int], seed: int = 0) -> dict[str, str]:
    """Case id -> "ct" or "mri" such that every list named in ``mri_counts`` holds that many MRI cases.

    The labeled subsets are nested, so each one's MRI cases are its predecessor's plus the difference,
    drawn from the cases it adds; the rest of ``train`` gets the remainder. Raises ``ValueError`` when
    the counts cannot be met (more MRI than cases, or a larger subset with fewer MRI than a smaller one).

    >>> splits = synthetic_split_ids()
    >>> plan = modality_plan(splits, AMOS_MRI_COUNTS)
    >>> [sum(plan[c] == "mri" for c in splits[n]) for n in ("labeled_2p", "labeled_5p", "train", "test")]
    [0, 3, 34, 20]
    """
    rng = np.random.default_rng(seed)
    plan = {case: "ct" for name in ("train", "eval", "test") for case in splits[name]}

    def place(name: str, pool: list[str], count: int) -> None:
        if not 0 <= count <= len(pool):
            raise ValueError(f"{name}: {count} MRI cases cannot be placed among {len(pool)}")
        for case in rng.choice(sorted(pool), size=count, replace=False):
            plan[str(case)] = "mri"

    labeled = sorted((n for n in mri_counts if n.startswith("labeled_")), key=lambda n: len(splits[n]))
    placed: set[str] = set()
    for name in labeled + ["train"]:
        members = set(splits[name])
        if not placed <= members:
            raise ValueError(f"{name} does not contain the smaller labeled subsets")
        already = sum(plan[c] == "mri" for c in placed)
        place(name, sorted(members - placed), mri_counts[name] - already)
        placed = members
    for name in ("eval", "test"):
        place(name, splits[name], mri_counts.get(name, 0))
    return plan
