"""From a source's raw data to deterministic train / val / test splits.

Every random draw (test carve-out, val carve-out, each subset) has its own generator derived
from `data.split_seed` and the draw's purpose. So the val split does not depend on the run's
training seed, and a dataset converted to parquet (test already carved) yields the same val
split as the original.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

from trainables.data.config import DataConfig
from trainables.data.registry import get_source
from trainables.data.tensors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTensorDataset,
    RawDataset,
    channel_stats,
    convert_channels,
    resize,
)
from trainables.errors import DataError

SPLITS = ("train", "val", "test")
ACCESS_LOG_ENV = "RAYNAS_SPLIT_ACCESS_LOG"
"""When set, a file that every materialised split is recorded in (one JSON line per split and
load, with the caller's purpose and pid): how tests prove the search never reads the test split."""


class SplitNotLoadedError(RuntimeError):
    """A split was used that its caller chose not to load."""


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: ImageTensorDataset | None
    val: ImageTensorDataset | None
    test: ImageTensorDataset | None
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.loaded()[0][1].image_shape

    def loaded(self) -> list[tuple[str, ImageTensorDataset]]:
        return [(s, getattr(self, s)) for s in SPLITS if getattr(self, s) is not None]

    def split(self, name: str) -> ImageTensorDataset:
        """The split `name`, or an error saying it was not loaded."""
        dataset = getattr(self, name)
        if dataset is None:
            raise SplitNotLoadedError(f"the {name} split was not loaded (load_splits(splits=...))")
        return dataset

    def sizes(self) -> dict[str, int]:
        return {split: len(dataset) for split, dataset in self.loaded()}


def generator(seed: int, purpose: str) -> torch.Generator:
    """An independent generator per (seed, purpose)."""
    digest = hashlib.sha256(f"raynas-split:{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def resolve_count(size: float, total: int, field: str) -> int:
    """A count (>= 1) or fraction (< 1) of `total`, checked to leave something on both sides."""
    count = int(size) if size >= 1 else int(round(size * total))
    if not 1 <= count < total:
        raise DataError(
            f"data.{field}={size:g} gives {count} of {total} images; allowed: a count in "
            f"[1, {total - 1}] or a fraction in (0, 1) leaving both sides non-empty"
        )
    return count


def carve(n: int, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `range(n)` into sorted (kept, carved) index tensors; `carved` has `count` elements."""
    perm = torch.randperm(n, generator=gen)
    return perm[count:].sort().values, perm[:count].sort().values


def _subset(indices: torch.Tensor, size: int | None, seed: int, split: str) -> torch.Tensor:
    if size is None:
        return indices
    if size > len(indices):
        raise DataError(
            f"data.subset.{split}={size} exceeds the {len(indices)} images of the {split} split; "
            f"allowed: 1..{len(indices)} or null"
        )
    pick = torch.randperm(len(indices), generator=generator(seed, f"subset-{split}"))[:size]
    return indices[pick.sort().values]


def with_test_split(raw: RawDataset, config: DataConfig, default_test_size: float) -> RawDataset:
    """`raw` itself if it has a test split, else `raw` with a seeded test carve-out."""
    if raw.test_images is not None:
        return raw
    size = config.test_size if config.test_size is not None else default_test_size
    count = resolve_count(size, len(raw.train_labels), "test_size")
    pool, test = carve(len(raw.train_labels), count, generator(config.split_seed, "test"))
    return replace(
        raw,
        train_images=raw.train_images[pool],
        train_labels=raw.train_labels[pool],
        test_images=raw.train_images[test],
        test_labels=raw.train_labels[test],
    )


def prepare_images(images: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """Channel conversion and resizing, done once at load."""
    if config.channels is not None:
        images = convert_channels(images, config.channels)
    if config.image_size is not None:
        images = resize(images, config.image_size)
    return images


def load_raw(config: DataConfig) -> RawDataset:
    """The dataset as its source decodes it, with a test split carved where it has none."""
    source = get_source(config.name)
    if source.has_test_split and config.test_size is not None:
        raise DataError(
            f"data.test_size={config.test_size:g}: {config.name} ships its own test split; allowed: null"
        )
    return with_test_split(source.load(config), config, source.default_test_size)


def record_access(splits: Iterable[str], purpose: str) -> None:
    """Append the materialised splits to ``$RAYNAS_SPLIT_ACCESS_LOG`` when it is set."""
    path = os.environ.get(ACCESS_LOG_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as log:
        for split in splits:
            entry = {"split": split, "purpose": purpose, "pid": os.getpid(), "time": time.time()}
            log.write(json.dumps(entry) + "\n")


def load_splits(
    config: DataConfig,
    splits: Iterable[str] = SPLITS,
    purpose: str = "unspecified",
) -> DatasetSplits:
    """Load `config.name` and return the requested splits as in-memory tensors.

    Splits not in `splits` are None and never materialised, so a search that asks for
    ``("val",)`` cannot read the test split. `purpose` names the caller in the access log.
    The train split's statistics still normalise every split (``normalize: data``).
    """
    wanted = tuple(splits)
    unknown = sorted(set(wanted) - set(SPLITS))
    if unknown or not wanted:
        raise ValueError(f"splits={wanted}: allowed a non-empty subset of {SPLITS}")
    raw = load_raw(config)
    default_val_size = get_source(config.name).default_val_size
    val_size = config.val_size if config.val_size is not None else default_val_size
    count = resolve_count(val_size, len(raw.train_labels), "val_size")
    train_idx, val_idx = carve(len(raw.train_labels), count, generator(config.split_seed, "val"))
    assert raw.test_labels is not None and raw.test_images is not None
    indices = {
        "train": _subset(train_idx, config.subset.train, config.split_seed, "train"),
        "val": _subset(val_idx, config.subset.val, config.split_seed, "val"),
        "test": _subset(
            torch.arange(len(raw.test_labels)), config.subset.test, config.split_seed, "test"
        ),
    }
    pools = {
        "train": (raw.train_images, raw.train_labels),
        "val": (raw.train_images, raw.train_labels),
        "test": (raw.test_images, raw.test_labels),
    }
    needed = set(wanted) | ({"train"} if config.normalize == "data" else set())
    images = {
        split: prepare_images(pools[split][0][idx], config)
        for split, idx in indices.items()
        if split in needed
    }
    mean, std = _normalisation(config, images.get("train", images[wanted[0]]))
    datasets = {
        split: ImageTensorDataset(images[split], pools[split][1][idx], mean, std, indices=idx)
        if split in wanted
        else None
        for split, idx in indices.items()
    }
    record_access(wanted, purpose)
    return DatasetSplits(
        name=config.name, classes=raw.classes, mean=mean, std=std, origin=raw.origin, **datasets
    )


def _normalisation(
    config: DataConfig, train_images: torch.Tensor
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    channels = train_images.shape[1]
    if config.normalize == "data":
        return channel_stats(train_images)
    if config.normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    if config.normalize == "imagenet":
        if channels != 3:
            raise DataError(
                f"data.normalize=imagenet needs 3-channel images, these have {channels}; "
                "allowed: data, none, custom, or set data.channels=3"
            )
        return IMAGENET_MEAN, IMAGENET_STD
    assert config.mean is not None and config.std is not None  # checked by DataConfig
    if len(config.mean) != channels:
        raise DataError(
            f"data.mean has {len(config.mean)} values but the images have {channels} channels"
        )
    return tuple(config.mean), tuple(config.std)
