"""Image datasets stored as parquet: the format clusters stream from S3/GCS/NFS.

Layout: `data.root` is a folder (local path or `s3://`, `gs://` URI) holding `train.parquet` and
optionally `test.parquet`, or a single `.parquet` file (train only; test is then carved). Each of
`train.parquet` / `test.parquet` may also be a folder of `*.parquet` files, read in name order
(what Spark and pyarrow write for a partitioned table).
Columns: `image` (binary) and `label` (integer).

Files written by `raynas data convert` carry schema metadata `raynas` (JSON) with the layout
`uint8-chw`, the image shape and the class names; their image bytes are raw pixels and are read
with one zero-copy reshape of the column's data buffer, with no per-image decoding. Other
parquet files (images as PNG/JPEG bytes, or a `{bytes, path}` struct as written by Hugging Face
datasets) are decoded with Pillow.

Rows are numbered across a split's files in order; `open_set` reads only the footers (row
counts per row group, schema, label statistics), and `iter_rows` reads chosen rows one row group
at a time: what the streaming loader (`trainables/data/stream.py`) and a bounded sample need.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from trainables.data.config import DataConfig
from trainables.data.registry import register_dataset
from trainables.data.tensors import RawDataset
from trainables.errors import DataError
from trainables.storage import Location, StorageError, open_location

METADATA_KEY = b"raynas"
RAW_LAYOUT = "uint8-chw"
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"


#: where a parquet dataset lives: a filesystem and a path in it (``trainables.storage``)
ParquetLocation = Location


def resolve(uri: str) -> ParquetLocation:
    """A local path or a URI that pyarrow.fs understands (s3://, gs://, hdfs://, file://),
    through ``trainables.storage.open_location``; a bad one is a DataError naming data.root.

    Object-store credentials and endpoints come from the environment as pyarrow reads them
    (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`, ...).
    """
    try:
        return open_location(uri, "data.root")
    except StorageError as exc:
        raise DataError(str(exc)) from None


@functools.lru_cache(maxsize=8)
def resolve_cached(uri: str) -> ParquetLocation:
    """`resolve`, once per process (read tasks of the streaming loader call it per block)."""
    return resolve(uri)


@dataclass(frozen=True)
class ParquetPart:
    """One parquet file of a split: where it is and how many rows each row group holds."""

    path: str
    row_groups: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class ParquetSet:
    """The files of one split (`train.parquet`, a folder of parts, or the one `.parquet` file),
    described from their footers only. Rows are numbered across the parts in order."""

    uri: str  # data.root as given: workers resolve it themselves (their own credentials)
    path: str  # the split's file or folder, for messages
    parts: tuple[ParquetPart, ...]
    meta: dict | None  # the `raynas` schema metadata of the first part
    label_type: str

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.parts)

    @property
    def raw(self) -> bool:
        return self.meta is not None and self.meta.get("layout") == RAW_LAYOUT

    def groups(self) -> list[tuple[int, int, int, int]]:
        """(part index, row group index, first global row, rows) of every row group, in order."""
        out, start = [], 0
        for i, part in enumerate(self.parts):
            for g, rows in enumerate(part.row_groups):
                out.append((i, g, start, rows))
                start += rows
        return out


def split_paths(config: DataConfig) -> tuple[ParquetLocation, str, str | None]:
    """(location, train path, test path or None) of `config`'s parquet dataset; each path is a
    `.parquet` file or a folder of them."""
    if config.root is None:
        raise DataError(
            "data.root is required for parquet: a folder with train.parquet or a .parquet file"
        )
    location = resolve(config.root)
    kind = location.kind(location.path)
    if location.path.endswith(".parquet") and kind == pafs.FileType.File:
        return location, location.path, None
    if location.path.endswith(".parquet") and kind == pafs.FileType.NotFound:
        raise DataError(f"data.root={config.root!r}: no such parquet file")
    train, test = location.child("train.parquet"), location.child("test.parquet")
    if location.kind(train) == pafs.FileType.NotFound:
        if location.path.endswith(".parquet") and kind == pafs.FileType.Directory:
            return location, location.path, None  # one split written as a folder of parts
        raise DataError(f"data.root={config.root!r} holds no train.parquet")
    if location.kind(test) == pafs.FileType.NotFound:
        return location, train, None
    if config.test_size is not None:
        raise DataError(
            f"data.test_size={config.test_size:g}: {config.root} has a test.parquet; allowed: null"
        )
    return location, train, test


def _part_paths(location: ParquetLocation, path: str) -> list[str]:
    if location.kind(path) == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(path, recursive=False)
    files = sorted(
        info.path
        for info in location.filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not os.path.basename(info.path).startswith((".", "_"))
    )
    if not files:
        raise DataError(f"{path} is a folder without .parquet files")
    return files


def _open(location: ParquetLocation, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, filesystem=location.filesystem)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from None


def _check_schema(schema: pa.Schema, path: str) -> None:
    missing = {IMAGE_COLUMN, LABEL_COLUMN} - set(schema.names)
    if missing:
        raise DataError(
            f"{path} lacks column(s) {sorted(missing)}; has {schema.names}; "
            f"expected `{IMAGE_COLUMN}` (bytes) and `{LABEL_COLUMN}` (integer)"
        )
    label = schema.field(LABEL_COLUMN).type
    if not pa.types.is_integer(label):
        raise DataError(f"{path}: column `{LABEL_COLUMN}` must be non-null integers, is {label}")


def open_set(location: ParquetLocation, path: str) -> ParquetSet:
    """Describe a split's parquet file(s) from their footers: no image is read."""
    parts, meta, label_type = [], None, ""
    for i, part_path in enumerate(_part_paths(location, path)):
        handle = _open(location, part_path)
        schema = handle.schema_arrow
        _check_schema(schema, part_path)
        if i == 0:
            raw = (schema.metadata or {}).get(METADATA_KEY)
            meta = json.loads(raw) if raw else None
            label_type = str(schema.field(LABEL_COLUMN).type)
        md = handle.metadata
        parts.append(
            ParquetPart(
                part_path, tuple(md.row_group(g).num_rows for g in range(md.num_row_groups))
            )
        )
    return ParquetSet(location.uri, path, tuple(parts), meta, label_type)


def label_range(location: ParquetLocation, pset: ParquetSet) -> tuple[int, int]:
    """(min, max) label of a split from the row groups' column statistics; the label column
    alone is read only where a row group has none. Null labels are an error."""
    low, high = None, None
    for part in pset.parts:
        handle = _open(location, part.path)
        md = handle.metadata
        for g in range(md.num_row_groups):
            group = md.row_group(g)
            column = next(
                group.column(j)
                for j in range(group.num_columns)
                if group.column(j).path_in_schema == LABEL_COLUMN
            )
            stats = column.statistics
            if group.num_rows == 0:
                continue
            if stats is not None and stats.has_min_max and stats.has_null_count:
                if stats.null_count:
                    raise DataError(f"{part.path}: {stats.null_count} label(s) are null")
                lo, hi = int(stats.min), int(stats.max)
            else:
                labels = labels_of(
                    handle.read_row_group(g, columns=[LABEL_COLUMN]).column(0), part.path
                )
                lo, hi = int(labels.min()), int(labels.max())
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
    if low is None or high is None:
        raise DataError(f"{pset.path} holds no rows")
    return low, high


def iter_rows(
    location: ParquetLocation, pset: ParquetSet, rows: np.ndarray, batch_rows: int = 1024
) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """The rows `rows` (sorted global row numbers) of `pset` as (row numbers, table of image and
    label) chunks, reading only the row groups that hold them, at most `batch_rows` source rows
    at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows[0] < 0 or rows[-1] >= pset.num_rows):
        raise IndexError(f"rows outside [0, {pset.num_rows}) of {pset.path}")
    handles: dict[int, pq.ParquetFile] = {}
    for part, group, first, count in pset.groups():
        lo, hi = np.searchsorted(rows, [first, first + count])
        if lo == hi:
            continue
        local = rows[lo:hi] - first
        if part not in handles:
            handles = {part: _open(location, pset.parts[part].path)}
        offset = 0
        for batch in handles[part].iter_batches(
            batch_size=batch_rows, row_groups=[group], columns=[IMAGE_COLUMN, LABEL_COLUMN]
        ):
            a, b = np.searchsorted(local, [offset, offset + batch.num_rows])
            if a < b:
                table = pa.Table.from_batches([batch]).take(pa.array(local[a:b] - offset))
                yield local[a:b] + first, table
            offset += batch.num_rows


def _raw_images(
    column: pa.Array | pa.ChunkedArray, shape: tuple[int, int, int], path: str
) -> np.ndarray:
    """Raw pixel bytes -> `[N, C, H, W]` uint8 with one reshape of the data buffer."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise DataError(f"{path}: {array.null_count} image(s) are null")
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise DataError(f"{path}: raw images must be a binary column, is {array.type}")
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type)[
        array.offset : array.offset + len(array) + 1
    ]
    item = int(np.prod(shape))
    if len(array) and not np.all(np.diff(offsets) == item):
        raise DataError(
            f"{path}: image byte lengths differ from {item} = C*H*W of shape {list(shape)}"
        )
    if not len(array):
        return np.empty((0, *shape), dtype=np.uint8)
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape((len(array), *shape))


def _encoded_images(
    column: pa.Array | pa.ChunkedArray, path: str, channels: int | None
) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    values = column.to_pylist()
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for i, value in enumerate(values):
        blob = value.get("bytes") if isinstance(value, dict) else value
        if blob is None:
            raise DataError(f"{path}: row {i} has no image bytes")
        try:
            with Image.open(io.BytesIO(blob)) as img:
                array = np.asarray(img.convert(mode), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: row {i} is not a decodable image: {exc}") from None
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    if len({a.shape for a in arrays}) > 1:
        raise DataError(f"{path}: images differ in size; convert them to one size first")
    if not arrays:
        return np.empty((0, 1 if channels == 1 else 3, 0, 0), dtype=np.uint8)
    return np.stack(arrays)


def decode_images(
    column: pa.Array | pa.ChunkedArray, pset: ParquetSet, channels: int | None
) -> np.ndarray:
    """A chunk of `pset`'s image column -> uint8 `[N, C, H, W]` (raw layout: one reshape;
    otherwise Pillow, in `channels`' mode). The same function for every loader."""
    if pset.raw:
        assert pset.meta is not None
        return _raw_images(column, tuple(pset.meta["shape"]), pset.path)
    return _encoded_images(column, pset.path, channels)


def labels_of(column: pa.Array | pa.ChunkedArray, path: str) -> np.ndarray:
    if column.null_count:
        raise DataError(f"{path}: {column.null_count} label(s) are null")
    return column.to_numpy().astype(np.int64)


def read_set(
    location: ParquetLocation, pset: ParquetSet, channels: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image and label of a split, decoded (the memory loader)."""
    images, labels = [], []
    for part in pset.parts:
        try:
            table = pq.read_table(
                part.path, columns=[IMAGE_COLUMN, LABEL_COLUMN], filesystem=location.filesystem
            )
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read parquet file {part.path}: {exc}") from None
        images.append(decode_images(table.column(IMAGE_COLUMN), pset, channels))
        labels.append(labels_of(table.column(LABEL_COLUMN), part.path))
    if len({a.shape[1:] for a in images}) > 1:
        raise DataError(f"{pset.path}: images differ in size; convert them to one size first")
    return (
        torch.from_numpy(np.concatenate(images) if len(images) > 1 else np.array(images[0])),
        torch.from_numpy(np.concatenate(labels)),
    )


def classes_of(pset: ParquetSet, top: int, root: str) -> tuple[str, ...]:
    """The class names the metadata gives, else "0".."top"."""
    if pset.meta is not None and "classes" in pset.meta:
        classes = tuple(pset.meta["classes"])
        if top >= len(classes):
            raise DataError(f"{root}: labels reach {top} but metadata names {len(classes)} classes")
        return classes
    return tuple(str(i) for i in range(top + 1))


@register_dataset(
    "parquet",
    "parquet files at data.root (local, s3://, gs://): train.parquet [+ test.parquet], "
    "columns image (bytes) + label (int); write them with `raynas data convert`",
    default_val_size=0.1,
    has_test_split=False,
    default_test_size=0.2,
)
def load(config: DataConfig) -> RawDataset:
    location, train_path, test_path = split_paths(config)
    train_set = open_set(location, train_path)
    train_images, train_labels = read_set(location, train_set, config.channels)
    test_images = test_labels = None
    if test_path is not None:
        test_images, test_labels = read_set(
            location, open_set(location, test_path), config.channels
        )
    top = int(max(train_labels.max(), test_labels.max() if test_labels is not None else 0))
    classes = classes_of(train_set, top, config.root or "")
    return RawDataset(train_images, train_labels, test_images, test_labels, classes, config.root)
