"""Datasets on disk: NIfTI + dataset.json + split files (nnU-Net layout), and the synthetic cohort."""
from benchmarks.data.nifti import (Case, DatasetInfo, check_splits, load_dataset, normalise_intensity, read_case,
                                   read_split, split_name)

__all__ = ["Case", "DatasetInfo", "check_splits", "load_dataset", "normalise_intensity", "read_case", "read_split",
           "split_name"]
