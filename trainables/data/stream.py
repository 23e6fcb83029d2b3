"""The `parquet` dataset without decoding whole splits: planning and row-level reads.

`data.loader: stream` (or `auto` above `data.stream.above_gib`) trains from the parquet files
through Ray Data (`trainables/data/ingest.py`). What happens before that, on the driver, is
here, and reads no split:

* **Which rows.** The parquet footers give the row count of every row group. The test carve-out
  (files without `test.parquet`), the val carve-out and the subsets are the functions the
  memory loader uses (`splits.test_carve`, `splits.split_positions`), applied to those counts,
  so the same `data.split_seed` selects the same rows in both loaders. A split is a sorted array
  of row numbers (numbered across the split's files in order), read by row group.
* **Shape, classes, counts.** One image (the first train row) is decoded and prepared
  (channels, resize) for the image shape; labels come from the row groups' column statistics.
* **Normalisation** (``normalize: data``): the integer pixel sums of the seeded sample
  `splits.stats_positions` (`data.stats_images` train images, one row group at a time), the
  sample and arithmetic the memory loader uses, so both give bit-identical mean/std.

`plan_splits` records this in the split access log as ``access: metadata`` with the number of
images it decoded. `materialise` is `load_splits` for streamed datasets: it decodes only the
rows of the requested splits (the search's evaluators hold val in memory this way).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainables.data.config import DataConfig
from trainables.data.registry import get_source
from trainables.data.sources.parquet import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    ParquetLocation,
    ParquetSet,
    classes_of,
    decode_images,
    iter_rows,
    label_range,
    labels_of,
    open_set,
    split_paths,
)
from trainables.data.splits import (
    SPLITS,
    DatasetSplits,
    SplitNotLoadedError,
    head,
    normalisation,
    prepare_images,
    record_access,
    split_positions,
    stats_count,
    stats_positions,
    test_carve,
)
from trainables.data.tensors import ImageTensorDataset, pixel_sums
from trainables.errors import DataError


@dataclass(frozen=True)
class Selection:
    """One split's images: `rows` of the parquet set `pool`, and their `positions` in the split's
    pool as the memory loader numbers them (`ImageTensorDataset.indices`)."""

    pool: str  # "train" or "test": which ParquetSet holds the rows
    positions: np.ndarray
    rows: np.ndarray  # sorted

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions: np.ndarray | list[int]) -> Selection:
        """The images at `positions` (sorted positions within this split)."""
        index = np.asarray(positions, dtype=np.int64)
        return Selection(self.pool, self.positions[index], self.rows[index])


@dataclass(frozen=True)
class Layout:
    """The parquet files of a dataset and every split's rows, from the footers alone."""

    location: ParquetLocation
    sets: dict[str, ParquetSet]  # "train", and "test" when the files have a test split
    selections: dict[str, Selection]  # train / val / test

    def set_of(self, split: str) -> ParquetSet:
        return self.sets[self.selections[split].pool]


def layout(config: DataConfig) -> Layout:
    location, train_path, test_path = split_paths(config)
    train = open_set(location, train_path)
    sets = {"train": train}
    if test_path is None:
        pool, test_rows = test_carve(
            train.num_rows, config, get_source(config.name).default_test_size
        )
        pool_rows, test_rows, test_pool = pool.numpy(), test_rows.numpy(), "train"
    else:
        sets["test"] = open_set(location, test_path)
        pool_rows = np.arange(train.num_rows)
        test_rows, test_pool = np.arange(sets["test"].num_rows), "test"
    positions = {
        k: v.numpy() for k, v in split_positions(len(pool_rows), len(test_rows), config).items()
    }
    selections = {
        "train": Selection("train", positions["train"], pool_rows[positions["train"]]),
        "val": Selection("train", positions["val"], pool_rows[positions["val"]]),
        "test": Selection(test_pool, positions["test"], test_rows[positions["test"]]),
    }
    return Layout(location, sets, selections)


def read_prepared(
    location: ParquetLocation,
    pset: ParquetSet,
    rows: np.ndarray,
    config: DataConfig,
    batch_rows: int = 1024,
) -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray]]:
    """(rows, prepared uint8 images, int64 labels) chunks of `rows` (sorted) of `pset`."""
    for chunk, table in iter_rows(location, pset, rows, batch_rows):
        images = torch.from_numpy(decode_images(table.column(IMAGE_COLUMN), pset, config.channels))
        yield (
            chunk,
            prepare_images(images, config),
            labels_of(table.column(LABEL_COLUMN), pset.path),
        )


def sample_shape(plan: Layout, config: DataConfig) -> tuple[int, int, int]:
    """The prepared shape of one image: the first train row, decoded and prepared."""
    train = plan.selections["train"]
    if not len(train):
        raise DataError(f"data.root={config.root!r}: the train split is empty")
    for _, images, _ in read_prepared(
        plan.location, plan.set_of("train"), train.rows[:1], config, 1
    ):
        return tuple(images.shape[1:])  # type: ignore[return-value]
    raise AssertionError("row 0 of the train split was not read")


def decoded_bytes(config: DataConfig) -> int:
    """What the memory loader would decode: every row of the parquet files at the prepared
    image size (what `data.loader: auto` compares with `data.stream.above_gib`)."""
    plan = layout(config)
    item = int(np.prod(sample_shape(plan, config)))
    return item * sum(s.num_rows for s in plan.sets.values())


def _sample_sums(plan: Layout, config: DataConfig) -> tuple[int, list[int], list[int]]:
    """Pixel sums of the statistics sample, accumulated one chunk at a time."""
    train = plan.selections["train"]
    rows = train.rows[stats_positions(len(train), config).numpy()]
    count, total, total_sq = 0, None, None
    for _, images, _ in read_prepared(plan.location, plan.set_of("train"), rows, config):
        c, t, q = pixel_sums(images)
        count += c
        total = t if total is None else [a + b for a, b in zip(total, t, strict=True)]
        total_sq = q if total_sq is None else [a + b for a, b in zip(total_sq, q, strict=True)]
    assert total is not None and total_sq is not None
    return count, total, total_sq


@dataclass(frozen=True)
class StreamInfo:
    """What a training worker needs to know about streamed data (no row numbers)."""

    name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: dict[str, int]  # images per streamed dataset ("train", "val", "selector")
    shuffle_buffer: int = 4096

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class StreamSplits:
    """The driver's view of streamed splits: counts, shape, classes and normalisation, with the
    rows of each requested split; the images stay in the files (``loader == "stream"``).
    `split(name)` gives a :class:`Selection` (its `len` is the split's size)."""

    name: str
    config: DataConfig
    plan: Layout
    wanted: tuple[str, ...]
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str
    stats_images: int
    loader: str = field(default="stream")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Selection:
        if name not in self.wanted:
            raise SplitNotLoadedError(f"the {name} split was not loaded (open_splits(splits=...))")
        return self.plan.selections[name]

    @property
    def train(self) -> Selection | None:
        return self.split("train") if "train" in self.wanted else None

    @property
    def val(self) -> Selection | None:
        return self.split("val") if "val" in self.wanted else None

    @property
    def test(self) -> Selection | None:
        return self.split("test") if "test" in self.wanted else None

    def sizes(self) -> dict[str, int]:
        return {s: len(self.plan.selections[s]) for s in SPLITS if s in self.wanted}

    def set_of(self, selection: Selection) -> ParquetSet:
        return self.plan.sets[selection.pool]

    def info(self, sizes: Mapping[str, int]) -> StreamInfo:
        return StreamInfo(
            name=self.name,
            classes=self.classes,
            image_shape=self.image_shape,
            mean=self.mean,
            std=self.std,
            sizes=dict(sizes),
            shuffle_buffer=self.config.stream.shuffle_buffer,
        )

    def describe(self) -> dict[str, Any]:
        return describe(self)


def describe(splits: Any) -> dict[str, Any]:
    """How the splits are read and normalised (for a stage's result and params)."""
    return {
        "loader": splits.loader,
        "mean": list(splits.mean),
        "std": list(splits.std),
        "stats_images": splits.stats_images,
        "sizes": splits.sizes(),
    }


def _classes(plan: Layout, config: DataConfig) -> tuple[str, ...]:
    top = max(label_range(plan.location, s)[1] for s in plan.sets.values())
    return classes_of(plan.sets["train"], top, config.root or "")


def plan_splits(
    config: DataConfig, wanted: tuple[str, ...], purpose: str = "unspecified"
) -> StreamSplits:
    """The streamed splits `wanted`, from parquet footers, one image and the statistics sample;
    logged as ``access: metadata`` with the images decoded here."""
    plan = layout(config)
    shape = sample_shape(plan, config)
    mean, std = normalisation(config, shape[0], lambda: _sample_sums(plan, config))
    n_stats = stats_count(len(plan.selections["train"]), config)
    splits = StreamSplits(
        name=config.name,
        config=config,
        plan=plan,
        wanted=wanted,
        classes=_classes(plan, config),
        image_shape=shape,
        mean=mean,
        std=std,
        origin=config.root or "",
        stats_images=n_stats,
    )
    decoded = {s: 0 for s in wanted}
    if "train" in decoded:
        decoded["train"] = 1 + n_stats  # the shape sample and the statistics sample
    record_access(wanted, purpose, "metadata", decoded)
    return splits


def materialise(
    config: DataConfig,
    wanted: tuple[str, ...],
    purpose: str = "unspecified",
    first: Mapping[str, int] | None = None,
) -> DatasetSplits:
    """`load_splits` for a streamed dataset: decodes only the rows of the `wanted` splits."""
    plan = layout(config)
    shape = sample_shape(plan, config)
    mean, std = normalisation(config, shape[0], lambda: _sample_sums(plan, config))
    limits = head({s: torch.as_tensor(sel.positions) for s, sel in plan.selections.items()}, first)
    datasets: dict[str, ImageTensorDataset | None] = {s: None for s in SPLITS}
    for split in wanted:
        selection = plan.selections[split].take(np.arange(len(limits[split])))
        images, labels = [], []
        for _, chunk, chunk_labels in read_prepared(
            plan.location, plan.set_of(split), selection.rows, config
        ):
            images.append(chunk)
            labels.append(torch.from_numpy(chunk_labels))
        stacked = torch.cat(images) if images else torch.empty((0, *shape), dtype=torch.uint8)
        datasets[split] = ImageTensorDataset(
            stacked,
            torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64),
            mean,
            std,
            indices=torch.as_tensor(selection.positions),
        )
    record_access(wanted, purpose, "materialised", {s: len(datasets[s]) for s in wanted})
    return DatasetSplits(
        name=config.name,
        classes=_classes(plan, config),
        mean=mean,
        std=std,
        origin=config.root or "",
        loader="stream",
        stats_images=stats_count(len(plan.selections["train"]), config),
        **datasets,
    )
