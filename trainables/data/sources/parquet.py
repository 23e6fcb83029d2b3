"""Image datasets stored as parquet: the format clusters stream from S3/GCS/NFS.

Layout: `data.root` is a folder (local path or `s3://`, `gs://` URI) holding `train.parquet` and
optionally `test.parquet`, or a single `.parquet` file (train only; test is then carved).
Columns: `image` (binary) and `label` (integer).

Files written by `raynas data convert` carry schema metadata `raynas` (JSON) with the layout
`uint8-chw`, the image shape and the class names; their image bytes are raw pixels and are read
with one zero-copy reshape of the column's data buffer, with no per-image decoding. Other
parquet files (images as PNG/JPEG bytes, or a `{bytes, path}` struct as written by Hugging Face
datasets) are decoded with Pillow.
"""

from __future__ import annotations

import io
import json
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

METADATA_KEY = b"raynas"
RAW_LAYOUT = "uint8-chw"
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class ParquetLocation:
    filesystem: pafs.FileSystem
    path: str  # path inside `filesystem`
    uri: str  # as the user wrote it, for messages

    def child(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type == pafs.FileType.File


def resolve(uri: str) -> ParquetLocation:
    """A local path or a URI that pyarrow.fs understands (s3://, gs://, hdfs://, file://)."""
    try:
        if "://" in uri:
            filesystem, path = pafs.FileSystem.from_uri(uri)
        else:
            import os

            filesystem, path = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"data.root={uri!r} is not a usable path or URI: {exc}") from None
    return ParquetLocation(filesystem, path, uri)


def read_table(location: ParquetLocation, path: str) -> pa.Table:
    try:
        table = pq.read_table(path, filesystem=location.filesystem)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from None
    missing = {IMAGE_COLUMN, LABEL_COLUMN} - set(table.column_names)
    if missing:
        raise DataError(
            f"{path} lacks column(s) {sorted(missing)}; has {table.column_names}; "
            f"expected `{IMAGE_COLUMN}` (bytes) and `{LABEL_COLUMN}` (integer)"
        )
    return table


def metadata_of(table: pa.Table) -> dict | None:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None


def _raw_images(column: pa.ChunkedArray, shape: tuple[int, int, int], path: str) -> np.ndarray:
    """Raw pixel bytes -> `[N, C, H, W]` uint8 with one reshape of the data buffer."""
    array = column.combine_chunks()
    if array.null_count:
        raise DataError(f"{path}: {array.null_count} image(s) are null")
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type)[
        array.offset : array.offset + len(array) + 1
    ]
    item = int(np.prod(shape))
    if len(array) and not np.all(np.diff(offsets) == item):
        raise DataError(
            f"{path}: image byte lengths differ from {item} = C*H*W of shape {list(shape)}"
        )
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape((len(array), *shape))


def _encoded_images(column: pa.ChunkedArray, path: str, channels: int | None) -> np.ndarray:
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
    return np.stack(arrays)


def read_split(
    location: ParquetLocation, path: str, channels: int | None
) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    table = read_table(location, path)
    meta = metadata_of(table)
    labels = table.column(LABEL_COLUMN)
    if not pa.types.is_integer(labels.type) or labels.null_count:
        raise DataError(
            f"{path}: column `{LABEL_COLUMN}` must be non-null integers, is {labels.type}"
        )
    if meta is not None and meta.get("layout") == RAW_LAYOUT:
        images = _raw_images(table.column(IMAGE_COLUMN), tuple(meta["shape"]), path)
    else:
        images = _encoded_images(table.column(IMAGE_COLUMN), path, channels)
    label_array = labels.to_numpy().astype(np.int64)
    return torch.from_numpy(np.array(images)), torch.from_numpy(label_array), meta


@register_dataset(
    "parquet",
    "parquet files at data.root (local, s3://, gs://): train.parquet [+ test.parquet], "
    "columns image (bytes) + label (int); write them with `raynas data convert`",
    default_val_size=0.1,
    has_test_split=False,
    default_test_size=0.2,
)
def load(config: DataConfig) -> RawDataset:
    if config.root is None:
        raise DataError(
            "data.root is required for parquet: a folder with train.parquet or a .parquet file"
        )
    location = resolve(config.root)
    if location.path.endswith(".parquet"):
        train_path, test_path = location.path, None
        if not location.exists(train_path):
            raise DataError(f"data.root={config.root!r}: no such parquet file")
    else:
        train_path, test_path = location.child("train.parquet"), location.child("test.parquet")
        if not location.exists(train_path):
            raise DataError(f"data.root={config.root!r} holds no train.parquet")
        if not location.exists(test_path):
            test_path = None
    train_images, train_labels, meta = read_split(location, train_path, config.channels)
    test_images = test_labels = None
    if test_path is not None:
        if config.test_size is not None:
            raise DataError(
                f"data.test_size={config.test_size:g}: {config.root} has a test.parquet; allowed: null"
            )
        test_images, test_labels, _ = read_split(location, test_path, config.channels)
    top = int(max(train_labels.max(), test_labels.max() if test_labels is not None else 0))
    if meta is not None and "classes" in meta:
        classes = tuple(meta["classes"])
        if top >= len(classes):
            raise DataError(
                f"{config.root}: labels reach {top} but metadata names {len(classes)} classes"
            )
    else:
        classes = tuple(str(i) for i in range(top + 1))
    return RawDataset(train_images, train_labels, test_images, test_labels, classes, config.root)
