"""Datasets: the in-memory type, loaders for HDF5/.npz/Minari, subsampling and reference scores."""

from .dataset import Dataset, DatasetError, Normalizer, ReferenceScores
from .loaders import load_dataset, load_hdf5, load_minari, load_npz, save_hdf5, save_npz
from .reference import D4RL_REFERENCE_SCORES
from .splits import split_train_validation, subsample

__all__ = [
    "Dataset",
    "ReferenceScores",
    "Normalizer",
    "DatasetError",
    "load_dataset",
    "load_hdf5",
    "load_npz",
    "load_minari",
    "save_npz",
    "save_hdf5",
    "subsample",
    "split_train_validation",
    "D4RL_REFERENCE_SCORES",
]
