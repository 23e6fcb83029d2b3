"""Datasets: one registry, each dataset decoded once into uint8 tensors and split
deterministically into train / val / test (the search reads val; test is read at export)."""

from trainables.data import sources  # noqa: F401  (registers the built-in datasets)
from trainables.data.config import DataConfig, SubsetConfig
from trainables.data.registry import DatasetSource, get_source, list_datasets, register_dataset
from trainables.data.splits import DatasetSplits, load_raw, load_splits
from trainables.data.tensors import ImageTensorDataset, RawDataset

__all__ = [
    "DataConfig",
    "DatasetSource",
    "DatasetSplits",
    "ImageTensorDataset",
    "RawDataset",
    "SubsetConfig",
    "get_source",
    "list_datasets",
    "load_raw",
    "load_splits",
    "register_dataset",
]
