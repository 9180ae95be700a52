"""Dataset reading: the synthetic cohort's layout, and every kind of bad input named precisely."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.data import load_dataset, read_case, read_split, split_name
from benchmarks.data.synthetic import AMOS_CLASSES, SyntheticAbdomen, synthetic_split_ids
from benchmarks.errors import DatasetError


def test_cohort_layout_and_split_sizes(tiny_cohort: Path) -> None:
    info = load_dataset(tiny_cohort)
    assert info.synthetic and info.class_names == AMOS_CLASSES and info.num_classes == 16
    sizes = {name: len(read_split(info, name)) for name in
             ("train", "eval", "test", "labeled_5p", "unlabeled_5p", "labeled_2p", "labeled_10p")}
    assert sizes == {"train": 216, "eval": 24, "test": 120, "labeled_5p": 10, "unlabeled_5p": 206,
                     "labeled_2p": 4, "labeled_10p": 21}
    train = set(read_split(info, "train"))
    assert set(read_split(info, "labeled_5p")) | set(read_split(info, "unlabeled_5p")) == train
    assert not train & set(read_split(info, "test"))
    case = read_case(info, "syn_0001")
    assert case.image.shape == case.label.shape == (16, 16, 16)
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    assert "SYNTHETIC" in json.loads((tiny_cohort / "dataset.json").read_text())["description"]


def test_generator_is_deterministic_and_organs_do_not_overlap() -> None:
    gen = SyntheticAbdomen()
    a_img, a_lab, spacing = gen.generate((32, 32, 24), 5)
    b_img, b_lab, _ = gen.generate((32, 32, 24), 5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _, _ = gen.generate((32, 32, 24), 6)
    assert not np.array_equal(a_img, c_img)
    present = set(np.unique(a_lab).tolist())
    assert {6, 7, 1, 2, 3, 8, 9}.issubset(present)  # the large organs and the great vessels
    assert len(spacing) == 3 and all(s > 0 for s in spacing)


def test_labeled_subsets_are_nested() -> None:
    splits = synthetic_split_ids()
    assert set(splits["labeled_2p"]) < set(splits["labeled_5p"]) < set(splits["labeled_10p"])


def test_split_name() -> None:
    assert split_name(0.05, "labeled") == "labeled_5p"
    with pytest.raises(DatasetError, match="whole percentage"):
        split_name(0.055, "labeled")


def test_truncated_nifti_is_named(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    path = info.image_path("syn_0003")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=str(path)):
        read_case(info, "syn_0003")


def test_garbage_nifti_is_named(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    path = info.label_path("syn_0004")
    path.write_bytes(gzip.compress(b"this is not a NIfTI file"))
    with pytest.raises(DatasetError, match=str(path)):
        read_case(info, "syn_0004")


def test_a_case_is_decoded_once_per_process_read_only_and_again_when_its_file_changes(cohort_copy: Path) -> None:
    """The second read of an unchanged case is the same decoded object, its arrays cannot be written,
    and a file rewritten in place is decoded again."""
    import dataclasses
    info = load_dataset(cohort_copy)
    first = read_case(info, "syn_0008")
    assert read_case(info, "syn_0008") is first
    with pytest.raises(ValueError, match="read-only"):
        first.image[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="read-only"):
        first.label[0, 0, 0] = 1
    low, high = info.intensity_window
    other_window = dataclasses.replace(info, intensity_window=(low, high + 100))
    assert not np.array_equal(read_case(other_window, "syn_0008").image, first.image)  # decoding depends on it
    path = info.image_path("syn_0008")
    _rewrite(path, lambda a: a + 10)
    again = read_case(info, "syn_0008")
    assert again is not first and not np.array_equal(again.image, first.image)
    assert np.array_equal(again.label, first.label)


def test_the_case_cache_keeps_the_most_recent_cases_within_its_bytes(cohort_copy: Path) -> None:
    from benchmarks.data.nifti import _CaseCache
    info = load_dataset(cohort_copy)
    cases = [read_case(info, f"syn_{i:04d}") for i in (1, 2, 3)]
    size = cases[0].image.nbytes + cases[0].label.nbytes
    cache = _CaseCache(max_bytes=2 * size)
    for i, case in enumerate(cases):
        cache.put(("key", i), case)
    assert cache.get(("key", 0)) is None and cache.get(("key", 1)) is cases[1] and cache.nbytes == 2 * size
    cache.put(("key", 3), cases[0])  # key 2 is now the least recently used
    assert cache.get(("key", 2)) is None and cache.get(("key", 1)) is cases[1]


def _rewrite(path: Path, fn) -> None:
    img = nib.load(str(path))
    data = fn(np.asarray(img.dataobj))
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def test_shape_mismatch(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    _rewrite(info.label_path("syn_0005"), lambda a: a[:, :, :-1])
    with pytest.raises(DatasetError, match="shape"):
        read_case(info, "syn_0005")


def test_label_outside_class_map(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    def bad(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[0, 0, 0] = 21
        return a
    _rewrite(info.label_path("syn_0006"), bad)
    with pytest.raises(DatasetError, match=r"label values \[21\]"):
        read_case(info, "syn_0006")


def test_nan_voxels(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    def bad(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[1, 1, 1] = np.nan
        return a
    _rewrite(info.image_path("syn_0007"), bad)
    with pytest.raises(DatasetError, match="NaN"):
        read_case(info, "syn_0007")


def _edit_split(root: Path, name: str, ids: list[str]) -> None:
    (root / "splits" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    (root / "splits" / "SHA256SUMS").unlink()  # the user edits splits knowingly


def test_split_with_missing_case(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    _edit_split(cohort_copy, "labeled_5p", read_split(info, "labeled_5p") + ["syn_9999"])
    with pytest.raises(DatasetError, match=r"labeled_5p\.txt.*syn_9999"):
        read_split(info, "labeled_5p")


def test_split_with_duplicate(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    ids = read_split(info, "test")
    _edit_split(cohort_copy, "test", ids + ids[:1])
    with pytest.raises(DatasetError, match="listed twice"):
        read_split(info, "test")


def test_split_checksum_mismatch(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    path = cohort_copy / "splits" / "eval.txt"
    path.write_text(path.read_text() + "syn_0001\n")
    with pytest.raises(DatasetError, match="checksum"):
        read_split(info, "eval")


def test_missing_split_and_dataset_json(cohort_copy: Path, tmp_path: Path) -> None:
    info = load_dataset(cohort_copy)
    with pytest.raises(DatasetError, match="labeled_7p.*available"):
        read_split(info, "labeled_7p")
    with pytest.raises(DatasetError, match="dataset.json not found"):
        load_dataset(tmp_path / "nowhere")


def test_affine_mismatch(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    path = info.label_path("syn_0008")
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine * np.diag([2, 1, 1, 1])), str(path))
    with pytest.raises(DatasetError, match="affine"):
        read_case(info, "syn_0008")


def test_empty_label_map(cohort_copy: Path) -> None:
    info = load_dataset(cohort_copy)
    _rewrite(info.label_path("syn_0009"), lambda a: np.zeros_like(a))
    with pytest.raises(DatasetError, match="empty"):
        read_case(info, "syn_0009")


def test_synapse_cohort_label_set() -> None:
    from benchmarks.data.synthetic import SYNAPSE_CLASSES, SyntheticSynapse, synthetic_split_ids
    _, label, _ = SyntheticSynapse().generate((48, 48, 40), 0)
    assert set(np.unique(label).tolist()) <= set(range(len(SYNAPSE_CLASSES)))
    assert (label == SYNAPSE_CLASSES.index("portal_splenic_veins")).any()
    splits = synthetic_split_ids(SyntheticSynapse.split_sizes, SyntheticSynapse.labeled_counts)
    assert [len(splits[n]) for n in ("train", "eval", "test", "labeled_10p", "labeled_20p")] == [20, 4, 6, 2, 4]


def test_generator_v2_subjects_vary_as_a_real_cohort() -> None:
    """Version 2: CT phases and MRI-like subjects, upper-abdomen fields of view without the pelvic
    organs, habitus, lesions; the liver's intensity then spreads by far more than version 1's 8 HU."""
    gen = SyntheticAbdomen()
    subjects = [gen.subject(seed) for seed in range(60)]
    modalities = [s.modality for s in subjects]
    assert 4 <= modalities.count("mri") <= 16 and {s.phase for s in subjects} >= {"native", "arterial",
                                                                                 "portal_venous", "delayed"}
    assert any(s.fov_z[0] > 0.25 for s in subjects) and any(s.fov_z[0] < 0.08 for s in subjects)
    assert any(s.lesions for s in subjects) and min(s.body_scale[0] for s in subjects) < 0.9
    liver_means, bladders = [], []
    for seed in range(12):
        image, label, spacing = gen.generate((32, 32, 32), seed)
        liver_means.append(float(image[label == AMOS_CLASSES.index("liver")].mean()))
        bladders.append(int((label == AMOS_CLASSES.index("bladder")).sum()))
        assert spacing[2] == pytest.approx(320.0 * (gen.subject(seed).fov_z[1] - gen.subject(seed).fov_z[0]) / 32)
    assert np.std(liver_means) > 25.0
    upper = [i for i in range(12) if gen.subject(i).fov_z[0] > 0.25]
    assert upper and all(bladders[i] == 0 for i in upper)


def test_mri_counts_are_those_of_the_published_amos_split() -> None:
    """AMOS_MRI_COUNTS recounted from the shipped split lists (ids >= 500 are MRI scans)."""
    from benchmarks.data.cohort_splits import AMOS_MRI_COUNTS
    root = Path(__file__).resolve().parents[1] / "datasets" / "amos" / "splits"
    for name, count in AMOS_MRI_COUNTS.items():
        ids = (root / f"{name}.txt").read_text().split()
        assert sum(int(i.split("_")[1]) >= 500 for i in ids) == count, name


def test_written_cohort_places_mri_subjects_as_the_published_split(tiny_cohort: Path) -> None:
    """Version 3: the labeled 5 % holds 3 MRI-like subjects of 10 (version 2's random draw left it none)."""
    info = load_dataset(tiny_cohort)
    modality = dict(line.split(",")[:2] for line in (tiny_cohort / "subjects.csv").read_text().splitlines()[1:])
    counts = {n: sum(modality[c] == "mri" for c in read_split(info, n))
              for n in ("labeled_2p", "labeled_5p", "labeled_10p", "train", "eval", "test")}
    assert counts == {"labeled_2p": 0, "labeled_5p": 3, "labeled_10p": 5, "train": 34, "eval": 6, "test": 20}
    rows = {line.split(",")[0]: line for line in (tiny_cohort / "subjects.csv").read_text().splitlines()[1:]}
    mri_case = next(c for c in read_split(info, "labeled_5p") if modality[c] == "mri")
    index = int(mri_case.split("_")[1]) - 1  # the cohort's seed 0: subject seed = case position
    recorded = SyntheticAbdomen().subject(index, modality="mri").record()
    assert rows[mri_case] == ",".join([mri_case, *(str(v) for v in recorded.values())])


def test_a_chosen_modality_changes_only_the_modality() -> None:
    gen = SyntheticAbdomen()
    drawn = gen.subject(0)
    forced = gen.subject(0, modality="mri" if drawn.modality == "ct" else "ct")
    assert forced.modality != drawn.modality and forced.fov_z == drawn.fov_z and forced.noise_hu == drawn.noise_hu
    image_ct, label_ct, _ = gen.generate((24, 24, 24), 0, modality="ct")
    image_mri, label_mri, _ = gen.generate((24, 24, 24), 0, modality="mri")
    np.testing.assert_array_equal(label_ct, label_mri)
    assert not np.array_equal(image_ct, image_mri)
    with pytest.raises(ValueError, match="modality"):
        gen.subject(0, modality="pet")


def test_modality_plan_refuses_counts_it_cannot_meet() -> None:
    from benchmarks.data.cohort_splits import AMOS_MRI_COUNTS, modality_plan
    splits = synthetic_split_ids()
    with pytest.raises(ValueError, match="labeled_2p"):
        modality_plan(splits, {**AMOS_MRI_COUNTS, "labeled_2p": 5})
    with pytest.raises(ValueError, match="labeled_5p"):
        modality_plan(splits, {**AMOS_MRI_COUNTS, "labeled_2p": 4, "labeled_5p": 1})


def test_cohort_records_each_subject(tiny_cohort: Path) -> None:
    """``subjects.csv`` beside dataset.json: what every synthetic case drew; dataset.json counts modalities."""
    rows = (tiny_cohort / "subjects.csv").read_text().splitlines()
    meta = json.loads((tiny_cohort / "dataset.json").read_text())
    assert rows[0].startswith("case,modality,phase,fov_z_low") and len(rows) == 1 + meta["numTraining"]
    assert meta["modalities"] == {"ct": 300, "mri": 60} and meta["generator_version"] == "3"


def test_file_hash_cache_sees_what_another_writer_saved(tmp_path: Path) -> None:
    """The cache file is re-read when it changed since this process read it, and a remembered entry
    of a file that changed since is hashed again."""
    import hashlib

    from benchmarks.data.digest import FileHashCache
    cache_file, data = tmp_path / "cache" / "file-sha256.json", tmp_path / "a.bin"
    data.write_bytes(b"first")
    first = FileHashCache(cache_file)
    assert first.sha256(data) == hashlib.sha256(b"first").hexdigest()
    assert FileHashCache(cache_file).entries == {}  # nothing saved yet
    first.save()
    assert str(data.resolve()) in FileHashCache(cache_file).entries  # the saved file, read again
    data.write_bytes(b"second, longer")
    assert FileHashCache(cache_file).sha256(data) == hashlib.sha256(b"second, longer").hexdigest()
