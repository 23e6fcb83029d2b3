"""Streamed splits as Ray Data datasets, handed to Ray Train workers as shards.

A dataset here is one split's selected rows (:class:`~trainables.data.stream.Selection`):

* **Read** (`ParquetRowsDatasource`): one read task per row group that holds selected rows; it
  reads that row group (one block of `data.stream.block_rows` source rows at a time, through
  pyarrow on the local or `s3://`/`gs://` filesystem, which each task resolves from `data.root`
  with its own environment's credentials) and keeps the selected rows, with their row number.
  Ray Data's `read_parquet` cannot address rows by number, which the carve-outs need; the
  footers give every row group's first row, so a task knows the numbers of its rows.
* **Decode** (`map_batches` on Ray Data's CPU workers): raw pixels are reshaped, PNG/JPEG bytes
  decoded with Pillow, then channels converted and images resized: the functions the memory
  loader uses, so a row gives the same uint8 image in both loaders. Blocks stay uint8
  `[B, C, H, W]` (a quarter of float32 in the object store); the worker normalises each batch
  with one fused multiply-add (`tensors.Normalizer`).
* **Shuffle** (train only): each execution of the dataset (one per epoch) permutes the read
  tasks and the rows inside each task with a seed derived from the run's seed and Ray Data's
  execution index (the epoch count of this dataset, as Ray's own `read_parquet(shuffle=...)`
  does); each worker then shuffles through a local buffer of `data.stream.shuffle_buffer` rows
  seeded by (seed, epoch, rank). The order is seeded but, since tasks finish in parallel, not
  bit-reproducible; it is not the memory loader's order. Mixing is at row-group granularity plus
  the buffer: files sorted by class should be written with their rows shuffled.

`IngestConfig` splits train (and the bi-level selector's carve-out) equally across the workers
(Ray Train's default: every rank runs the same number of steps, up to `world - 1` rows dropped
per epoch) and val unequally, so every val image is scored exactly once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.train import DataConfig as TrainDataConfig

from trainables.data.config import DataConfig
from trainables.data.sources.parquet import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    ParquetSet,
    decode_images,
    iter_rows,
    resolve_cached,
)
from trainables.data.splits import prepare_images
from trainables.data.stream import Selection, StreamSplits
from trainables.errors import DataError

ROW_COLUMN = "row"


def mix_seed(*parts: Any) -> int:
    """A 32-bit seed from any parts (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _read_group(pset: ParquetSet, rows: np.ndarray, block_rows: int, seed: int | None):
    """The selected `rows` of one row group as blocks of (row, image bytes, label)."""
    location = resolve_cached(pset.uri)
    tables = [
        table.append_column(ROW_COLUMN, pa.array(chunk, pa.int64()))
        for chunk, table in iter_rows(location, pset, rows, block_rows)
    ]
    if not tables:
        return
    table = pa.concat_tables(tables)
    table = table.set_column(
        table.schema.get_field_index(LABEL_COLUMN),
        LABEL_COLUMN,
        pc.cast(table.column(LABEL_COLUMN), pa.int64()),
    )
    if seed is not None:
        table = table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))
    for start in range(0, table.num_rows, block_rows):
        yield table.slice(start, block_rows).combine_chunks()


class ParquetRowsDatasource(Datasource):
    """The rows `rows` (sorted row numbers) of a parquet set, one read task per row group."""

    def __init__(
        self,
        pset: ParquetSet,
        rows: np.ndarray,
        block_rows: int,
        shuffle_seed: int | None = None,
        item_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self.pset = pset
        self.rows = np.asarray(rows, dtype=np.int64)
        self.block_rows = block_rows
        self.shuffle_seed = shuffle_seed
        self.item_bytes = item_bytes

    def get_name(self) -> str:
        return "ParquetRows"

    def estimate_inmemory_data_size(self) -> int | None:
        return None if self.item_bytes is None else self.item_bytes * len(self.rows)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        tasks = []
        for _, _, first, count in self.pset.groups():
            lo, hi = np.searchsorted(self.rows, [first, first + count])
            if lo < hi:
                tasks.append((first, self.rows[lo:hi]))
        epoch = getattr(data_context, "_execution_idx", 0) if data_context is not None else 0
        seeds: list[int | None] = [None] * len(tasks)
        if self.shuffle_seed is not None:
            rng = np.random.default_rng(mix_seed(self.shuffle_seed, epoch))
            tasks = [tasks[i] for i in rng.permutation(len(tasks))]
            seeds = [mix_seed(self.shuffle_seed, epoch, first) for first, _ in tasks]
        out = []
        for (_, rows), seed in zip(tasks, seeds, strict=True):
            size = None if self.item_bytes is None else int(self.item_bytes * len(rows))
            out.append(
                ReadTask(
                    functools.partial(_read_group, self.pset, rows, self.block_rows, seed),
                    BlockMetadata(
                        num_rows=len(rows),
                        size_bytes=size,
                        input_files=None,
                        exec_stats=None,
                    ),
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return out


def _decode_batch(batch: pa.Table, pset: ParquetSet, config: DataConfig) -> dict[str, np.ndarray]:
    images = torch.from_numpy(decode_images(batch.column(IMAGE_COLUMN), pset, config.channels))
    return {
        ROW_COLUMN: batch.column(ROW_COLUMN).to_numpy(),
        IMAGE_COLUMN: prepare_images(images, config).numpy(),
        LABEL_COLUMN: batch.column(LABEL_COLUMN).to_numpy(),
    }


def dataset(
    splits: StreamSplits, selection: Selection, shuffle_seed: int | None = None
):  # -> ray.data.Dataset
    """`selection`'s rows as a Ray Data dataset of ``row`` (int64), ``image`` (uint8
    `[C, H, W]`, prepared) and ``label`` (int64); shuffled per execution when a seed is given."""
    import ray.data

    cfg = splits.config.stream
    pset = splits.set_of(selection)
    item = int(np.prod(splits.image_shape))
    source = ParquetRowsDatasource(pset, selection.rows, cfg.block_rows, shuffle_seed, item)
    ds = ray.data.read_datasource(source, num_cpus=cfg.decode_cpus)
    ds = ds.map_batches(
        _decode_batch,
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
        num_cpus=cfg.decode_cpus,
        fn_kwargs={"pset": pset, "config": splits.config},
    )
    ds.context.enable_progress_bars = False
    return ds


def check_cpus(splits: StreamSplits, train_cpus: float) -> None:
    """Ray Data needs CPUs beside the training workers' (else reads wait forever)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    need = splits.config.stream.decode_cpus
    if total - train_cpus < need:
        raise DataError(
            f"data.loader=stream decodes on Ray Data tasks of data.stream.decode_cpus={need:g} "
            f"CPU, but the training workers hold {train_cpus:g} of the cluster's {total:g} CPUs; "
            "allowed: fewer or smaller workers (resources.cpus_per_worker), a smaller "
            "data.stream.decode_cpus, more CPUs, or data.loader=memory"
        )


class IngestConfig(TrainDataConfig):
    """Ray Train's DataConfig for raynas's datasets: equal shards for training (every rank the
    same number of steps), every val row exactly once (an unequal split: evaluation runs no
    collective per batch)."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            resolve = getattr(self, "_resolve_execution_options", None)
            ds.context.execution_options = (
                resolve(name) if resolve is not None else self.default_ingest_options()
            )
            shards = ds.streaming_split(world_size, equal=name != "val", locality_hints=hints)
            for i, shard in enumerate(shards):
                output[i][name] = shard
        return output


def iter_images(shard, batch_size: int, **kwargs) -> Iterator[dict[str, torch.Tensor]]:
    """Torch batches (row, image, label) of a shard or dataset, on the CPU."""
    return shard.iter_torch_batches(batch_size=batch_size, device="cpu", **kwargs)
