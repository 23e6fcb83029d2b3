"""The dataset registry: name -> source. Sources register themselves on import.

A source only decodes files into a `RawDataset`; carving, subsetting, resizing and
normalisation are the same for every source and live in `splits.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trainables.data.config import DataConfig
from trainables.data.tensors import RawDataset
from trainables.errors import DataError


@dataclass(frozen=True)
class DatasetSource:
    name: str
    description: str
    load: Callable[[DataConfig], RawDataset]
    default_val_size: float  # count (>= 1) or fraction (< 1) of train carved out as val
    has_test_split: bool  # False: a test split is carved from train (data.test_size)
    default_test_size: float = 0.2


_SOURCES: dict[str, DatasetSource] = {}


def register_dataset(
    name: str,
    description: str,
    *,
    default_val_size: float,
    has_test_split: bool,
    default_test_size: float = 0.2,
) -> Callable[[Callable[[DataConfig], RawDataset]], Callable[[DataConfig], RawDataset]]:
    """Decorator registering `load(config) -> RawDataset` under `name`."""

    def decorate(load: Callable[[DataConfig], RawDataset]) -> Callable[[DataConfig], RawDataset]:
        if name in _SOURCES:
            raise ValueError(f"dataset {name!r} is already registered")
        _SOURCES[name] = DatasetSource(
            name, description, load, default_val_size, has_test_split, default_test_size
        )
        return load

    return decorate


def list_datasets() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> DatasetSource:
    try:
        return _SOURCES[name]
    except KeyError:
        raise DataError(
            f"data.name={name!r} is not a known dataset; allowed: {', '.join(list_datasets())}"
        ) from None
