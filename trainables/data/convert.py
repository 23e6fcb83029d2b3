"""Write any registered dataset as raynas parquet (see `sources/parquet.py` for the format).

The output appears complete or not at all: a local folder is written under a temporary name
and renamed into place; on object stores each file is written as `.partial` and moved, the
train file last (a reader requires train.parquet).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from trainables.data.config import DataConfig
from trainables.data.sources.parquet import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    METADATA_KEY,
    RAW_LAYOUT,
    ParquetLocation,
    resolve,
)
from trainables.data.splits import load_raw, prepare_images
from trainables.errors import DataError

ROW_GROUP_SIZE = 8192


def images_table(images: torch.Tensor, labels: torch.Tensor, meta: dict) -> pa.Table:
    """uint8 `[N, C, H, W]` -> a table whose `image` column shares the pixel buffer."""
    n, item = images.shape[0], int(np.prod(images.shape[1:]))
    pixels = np.ascontiguousarray(images.numpy()).reshape(-1)
    large = pixels.size >= 2**31
    offsets = np.arange(n + 1, dtype=np.int64 if large else np.int32) * item
    image_array = pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(),
        n,
        [None, pa.py_buffer(offsets), pa.py_buffer(pixels)],
    )
    table = pa.table(
        {IMAGE_COLUMN: image_array, LABEL_COLUMN: pa.array(labels.numpy(), pa.int64())}
    )
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})


def convert(config: DataConfig, out: str, overwrite: bool = False) -> dict[str, int]:
    """Write `config`'s dataset (test carved if it has none) to `out`; return rows per file."""
    raw = load_raw(config)
    assert raw.test_images is not None and raw.test_labels is not None
    splits = {
        "test": (prepare_images(raw.test_images, config), raw.test_labels),
        "train": (prepare_images(raw.train_images, config), raw.train_labels),
    }
    location = resolve(out)
    target_info = location.filesystem.get_file_info(location.path)
    if target_info.type != pafs.FileType.NotFound:
        if not overwrite:
            raise DataError(f"{out} already exists; choose another path or pass --overwrite")
        if target_info.type == pafs.FileType.File:
            raise DataError(f"{out} is a file; the output must be a folder")
    tables = {}
    for split, (images, labels) in splits.items():
        meta = {
            "version": 1,
            "layout": RAW_LAYOUT,
            "shape": list(images.shape[1:]),
            "classes": list(raw.classes),
            "source": config.name,
            "split": split,
            "split_seed": config.split_seed,
        }
        tables[split] = images_table(images, labels, meta)
    if isinstance(location.filesystem, pafs.LocalFileSystem):
        _write_local(location.path, tables, overwrite)
    else:
        _write_remote(location, tables)
    return {split: table.num_rows for split, table in tables.items()}


def _write_local(path: str, tables: dict[str, pa.Table], overwrite: bool) -> None:
    parent = os.path.dirname(path.rstrip("/")) or "."
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(
        parent, f".{os.path.basename(path.rstrip('/'))}.partial-{uuid.uuid4().hex[:8]}"
    )
    os.makedirs(staging)
    try:
        for split, table in tables.items():
            pq.write_table(
                table, os.path.join(staging, f"{split}.parquet"), row_group_size=ROW_GROUP_SIZE
            )
        if overwrite and os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _write_remote(location: ParquetLocation, tables: dict[str, pa.Table]) -> None:
    location.filesystem.create_dir(location.path, recursive=True)
    for split in ("test", "train"):  # train last: its presence marks a complete folder
        final = location.child(f"{split}.parquet")
        partial = final + ".partial"
        pq.write_table(
            tables[split], partial, filesystem=location.filesystem, row_group_size=ROW_GROUP_SIZE
        )
        location.filesystem.move(partial, final)
