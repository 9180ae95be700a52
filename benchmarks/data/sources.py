"""Which dataset folder a (study dataset, profile) pair uses, generating the synthetic cohort on demand."""
from __future__ import annotations

from pathlib import Path

from benchmarks.config import PROJECT_ROOT, Profile
from benchmarks.data.nifti import DatasetInfo, load_dataset
from benchmarks.data.synthetic import CohortGenerator, SyntheticAbdomen, SyntheticSynapse, write_cohort
from benchmarks.errors import ConfigError, DatasetError

DATASETS_DIR = PROJECT_ROOT / "datasets"
SYNTHETIC_GENERATORS: dict[str, type[CohortGenerator]] = {"amos": SyntheticAbdomen, "synapse": SyntheticSynapse}
COHORT_SEED = 0


def synthetic_root(dataset: str, shape: tuple[int, int, int]) -> Path:
    """Folder of the generated synthetic cohort for ``dataset`` at ``shape`` (git-ignored); the
    generator's version is part of the name, so a changed generator never reuses an old cohort."""
    version = SYNTHETIC_GENERATORS[dataset].version
    return (DATASETS_DIR / f"synthetic_{dataset}" / "generated"
            / f"{'x'.join(map(str, shape))}-seed{COHORT_SEED}-v{version}")


def resolve_dataset(dataset: str, profile: Profile, data_dir: str | Path | None = None,
                    progress: bool = True) -> DatasetInfo:
    """The dataset a study runs on.

    ``data_dir`` (``DATA=``) wins; otherwise the profile decides: ``synthetic`` generates (once) the
    synthetic cohort of ``dataset``, ``real`` expects a prepared folder ``datasets/<dataset>/prepared``.
    """
    if data_dir is not None:
        return load_dataset(data_dir)
    if profile.data == "synthetic":
        if dataset not in SYNTHETIC_GENERATORS:
            raise ConfigError(f"no synthetic cohort for dataset {dataset!r}; available: {sorted(SYNTHETIC_GENERATORS)}")
        if profile.cohort_shape is None:
            raise ConfigError(f"profile {profile.name!r} uses synthetic data but sets no cohort_shape")
        root = synthetic_root(dataset, profile.cohort_shape)
        if not (root / "dataset.json").is_file() and progress:
            print(f"generating the synthetic {dataset} cohort at {root} (once) ...", flush=True)
        write_cohort(SYNTHETIC_GENERATORS[dataset](), root, profile.cohort_shape, COHORT_SEED)
        return load_dataset(root)
    root = DATASETS_DIR / dataset / "prepared"
    if not (root / "dataset.json").is_file():
        raise DatasetError(f"profile {profile.name!r} needs the real {dataset} data: put a prepared folder "
                           f"(dataset.json, imagesTr/, labelsTr/, splits/) at {root} or pass DATA=<folder>; "
                           f"see README, 'Real data'")
    return load_dataset(root)
