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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import torch

from trainables.data.config import DataConfig
from trainables.data.registry import get_source
from trainables.data.tensors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTensorDataset,
    RawDataset,
    convert_channels,
    pixel_sums,
    resize,
    stats_from_sums,
)
from trainables.errors import DataError

SPLITS = ("train", "val", "test")
ACCESS_LOG_ENV = "RAYNAS_SPLIT_ACCESS_LOG"
"""When set, a file that every split access is recorded in (one JSON line per split and load,
with the caller's purpose, pid, `access` and the number of `images` decoded): how tests prove the
search never reads the test split, and that a streaming pre-flight materialises no split.
`access` is `materialised` (decoded into this process's memory), `metadata` (parquet footers and
at most a bounded sample; the streaming pre-flight) or `stream` (read through Ray Data shards)."""
STREAMABLE = frozenset({"parquet"})  # the datasets `data.loader: stream` can read


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
    loader: str = "memory"  # how the splits are read: memory (these tensors) or stream
    stats_images: int = 0  # train images the normalisation statistics came from (0: not data)

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


def test_carve(
    n: int, config: DataConfig, default_test_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, test) positions of a dataset of `n` train images that ships no test split."""
    size = config.test_size if config.test_size is not None else default_test_size
    count = resolve_count(size, n, "test_size")
    return carve(n, count, generator(config.split_seed, "test"))


def with_test_split(raw: RawDataset, config: DataConfig, default_test_size: float) -> RawDataset:
    """`raw` itself if it has a test split, else `raw` with a seeded test carve-out."""
    if raw.test_images is not None:
        return raw
    pool, test = test_carve(len(raw.train_labels), config, default_test_size)
    return replace(
        raw,
        train_images=raw.train_images[pool],
        train_labels=raw.train_labels[pool],
        test_images=raw.train_images[test],
        test_labels=raw.train_labels[test],
    )


def split_positions(n_pool: int, n_test: int, config: DataConfig) -> dict[str, torch.Tensor]:
    """Positions of each split in its pool: train and val in the `n_pool` train images (after
    any test carve-out), test in the `n_test` test images; subsets applied. Computed from the
    counts alone, so every loader selects exactly the same images."""
    default_val_size = get_source(config.name).default_val_size
    val_size = config.val_size if config.val_size is not None else default_val_size
    count = resolve_count(val_size, n_pool, "val_size")
    train_idx, val_idx = carve(n_pool, count, generator(config.split_seed, "val"))
    return {
        "train": _subset(train_idx, config.subset.train, config.split_seed, "train"),
        "val": _subset(val_idx, config.subset.val, config.split_seed, "val"),
        "test": _subset(torch.arange(n_test), config.subset.test, config.split_seed, "test"),
    }


def stats_positions(n_train: int, config: DataConfig) -> torch.Tensor:
    """Sorted positions (in the train split) of the seeded sample whose statistics normalise
    every split under ``normalize: data``: `data.stats_images` of them, or all."""
    if n_train <= config.stats_images:
        return torch.arange(n_train)
    pick = torch.randperm(n_train, generator=generator(config.split_seed, "stats"))
    return pick[: config.stats_images].sort().values


def head(
    indices: dict[str, torch.Tensor], first: Mapping[str, int] | None
) -> dict[str, torch.Tensor]:
    """Each split's first ``first[split]`` images (all where `first` names no limit)."""
    if not first:
        return indices
    unknown = sorted(set(first) - set(SPLITS))
    if unknown:
        raise ValueError(f"first={dict(first)}: unknown split(s) {unknown}; allowed {SPLITS}")
    return {s: idx[: first[s]] if s in first else idx for s, idx in indices.items()}


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


def resolve_loader(config: DataConfig) -> str:
    """`memory` or `stream`: what `data.loader` means for this dataset (auto: stream when the
    decoded parquet data would exceed `data.stream.above_gib`; reads footers and one image)."""
    if config.loader == "memory":
        return "memory"
    if config.name not in STREAMABLE:
        if config.loader == "stream":
            raise DataError(
                f"data.loader=stream reads parquet files, and data.name={config.name!r} is not "
                "parquet; allowed: memory or auto, or convert it (`raynas data convert`) and use "
                "data.name: parquet"
            )
        return "memory"
    if config.loader == "stream":
        return "stream"
    from trainables.data.stream import decoded_bytes

    return "stream" if decoded_bytes(config) > config.stream.above_gib * 2**30 else "memory"


def record_access(
    splits: Iterable[str],
    purpose: str,
    access: str = "materialised",
    images: Mapping[str, int] | None = None,
) -> None:
    """Append the accessed splits to ``$RAYNAS_SPLIT_ACCESS_LOG`` when it is set."""
    path = os.environ.get(ACCESS_LOG_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as log:
        for split in splits:
            entry = {
                "split": split,
                "purpose": purpose,
                "pid": os.getpid(),
                "time": time.time(),
                "access": access,
                "images": (images or {}).get(split),
            }
            log.write(json.dumps(entry) + "\n")


def _wanted(splits: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(splits)
    unknown = sorted(set(wanted) - set(SPLITS))
    if unknown or not wanted:
        raise ValueError(f"splits={wanted}: allowed a non-empty subset of {SPLITS}")
    return wanted


def load_splits(
    config: DataConfig,
    splits: Iterable[str] = SPLITS,
    purpose: str = "unspecified",
    first: Mapping[str, int] | None = None,
) -> DatasetSplits:
    """Load `config.name` and return the requested splits as in-memory tensors.

    Splits not in `splits` are None and never materialised, so a search that asks for
    ``("val",)`` cannot read the test split. `purpose` names the caller in the access log.
    `first` keeps only the first images of the named splits (e.g. ``{"train": 512}``).
    The train split's statistics still normalise every split (``normalize: data``), from the
    seeded sample of :func:`stats_positions`.

    Where `data.loader` resolves to `stream`, only the rows of the requested splits (and the
    statistics sample) are read from the parquet files: the same images, decoded the same way.
    """
    wanted = _wanted(splits)
    if resolve_loader(config) == "stream":
        from trainables.data.stream import materialise

        return materialise(config, wanted, purpose, first)
    raw = load_raw(config)
    assert raw.test_labels is not None and raw.test_images is not None
    full = split_positions(len(raw.train_labels), len(raw.test_labels), config)
    indices = head(full, first)
    pools = {
        "train": (raw.train_images, raw.train_labels),
        "val": (raw.train_images, raw.train_labels),
        "test": (raw.test_images, raw.test_labels),
    }
    images = {split: prepare_images(pools[split][0][indices[split]], config) for split in wanted}
    channels = images[wanted[0]].shape[1]

    def sample() -> tuple[int, list[int], list[int]]:
        chosen = stats_positions(len(full["train"]), config)
        if "train" in images and len(images["train"]) == len(full["train"]):
            return pixel_sums(images["train"][chosen])  # prepared already
        return pixel_sums(prepare_images(raw.train_images[full["train"][chosen]], config))

    mean, std = normalisation(config, channels, sample)
    datasets = {
        split: ImageTensorDataset(images[split], pools[split][1][idx], mean, std, indices=idx)
        if split in wanted
        else None
        for split, idx in indices.items()
    }
    record_access(wanted, purpose, "materialised", {s: len(images[s]) for s in wanted})
    return DatasetSplits(
        name=config.name,
        classes=raw.classes,
        mean=mean,
        std=std,
        origin=raw.origin,
        loader="memory",
        stats_images=stats_count(len(full["train"]), config),
        **datasets,
    )


def open_splits(config: DataConfig, splits: Iterable[str] = SPLITS, purpose: str = "unspecified"):
    """What a driver needs before training: the in-memory splits (:func:`load_splits`), or,
    where `data.loader` resolves to `stream`, a :class:`~trainables.data.stream.StreamSplits`
    plan read from the parquet footers and a bounded sample (no split is materialised)."""
    wanted = _wanted(splits)
    if resolve_loader(config) == "stream":
        from trainables.data.stream import plan_splits

        return plan_splits(config, wanted, purpose)
    return load_splits(config, wanted, purpose)


def stats_count(n_train: int, config: DataConfig) -> int:
    return min(n_train, config.stats_images) if config.normalize == "data" else 0


def normalisation(
    config: DataConfig, channels: int, sample: Callable[[], tuple[int, list[int], list[int]]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std `config.normalize` asks for; `sample()` gives the :func:`pixel_sums` of
    the statistics sample (only called for ``normalize: data``)."""
    if config.normalize == "data":
        return stats_from_sums(*sample())
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
