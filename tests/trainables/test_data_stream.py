"""`data.loader: stream` against the memory loader on real Fashion-MNIST: the same split seed
selects the same images (Ray Data datasets read on one local Ray), the same normalisation, and
a pre-flight that reads parquet metadata and a bounded sample only."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.helpers.servers import local_ray
from trainables.data import DataConfig, load_raw, load_splits
from trainables.data.convert import convert
from trainables.data.splits import ACCESS_LOG_ENV, open_splits, resolve_loader
from trainables.errors import DataError


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray():
        yield


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    """Fashion-MNIST written by `raynas data convert` (raw uint8 layout, test.parquet)."""
    out = tmp_path_factory.mktemp("raw") / "fmnist"
    convert(DataConfig(name="fashion_mnist", download=False), str(out))
    return str(out)


@pytest.fixture(scope="module")
def png_copy(tmp_path_factory) -> str:
    """3000 Fashion-MNIST train images as PNG bytes, written directly with pyarrow as a folder
    of two part files with small row groups (no test file: the test split is carved)."""
    raw = load_raw(DataConfig(name="fashion_mnist", download=False))
    root = tmp_path_factory.mktemp("png") / "fmnist.parquet"
    root.mkdir()
    for part, (lo, hi) in enumerate([(0, 1700), (1700, 3000)]):
        blobs = []
        for image in raw.train_images[lo:hi, 0].numpy():
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            blobs.append(buffer.getvalue())
        table = pa.table({"image": blobs, "label": pa.array(raw.train_labels[lo:hi], pa.int16())})
        pq.write_table(table, root / f"part-{part}.parquet", row_group_size=256)
    return str(root)


CASES = {
    "converted": {"subset": {"train": 2000, "val": 500, "test": 300}, "stats_images": 700},
    "png_copy": {"channels": 1, "stats_images": 700},
}


def config(root: str, case: str, loader: str, **extra) -> DataConfig:
    return DataConfig(
        name="parquet", root=root, split_seed=5, loader=loader, **{**CASES[case], **extra}
    )


def digests(images: torch.Tensor | np.ndarray, labels) -> list[tuple[str, int]]:
    array = np.ascontiguousarray(np.asarray(images))
    return [
        (hashlib.sha1(a.tobytes()).hexdigest(), int(y))
        for a, y in zip(array, np.asarray(labels), strict=True)
    ]


def streamed(ds) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """(row numbers, (image hash, label)) of a Ray Data dataset in the order it was read."""
    rows, items = [], []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        rows.extend(batch["row"].tolist())
        items.extend(digests(batch["image"], batch["label"]))
    return np.array(rows), items


@pytest.mark.parametrize("case", ["converted", "png_copy"])
def test_same_split_seed_streams_the_same_images(case, request, ray_cluster):
    from trainables.data.ingest import dataset

    root = request.getfixturevalue(case)
    memory = load_splits(config(root, case, "memory"), ("train", "val"))
    plan = open_splits(config(root, case, "stream"), ("train", "val"))
    assert plan.loader == "stream" and plan.sizes() == memory.sizes()
    assert plan.image_shape == memory.image_shape and plan.classes == memory.classes
    assert (plan.mean, plan.std) == (memory.mean, memory.std)  # bit-identical, same sample
    for split in ("train", "val"):
        held = getattr(memory, split)
        selection = plan.split(split)
        assert np.array_equal(selection.positions, held.indices.numpy()), split
        rows, items = streamed(dataset(plan, selection))
        order = np.argsort(rows, kind="stable")
        assert np.array_equal(rows[order], selection.rows), split  # every row once
        assert [items[i] for i in order] == digests(held.images, held.labels), split
    # the training dataset's per-epoch shuffle reorders the same multiset
    rows, items = streamed(dataset(plan, plan.split("train"), shuffle_seed=3))
    assert sorted(items) == sorted(digests(memory.train.images, memory.train.labels))
    assert not np.array_equal(rows, np.sort(rows))


def test_materialised_stream_splits_equal_memory(png_copy):
    """What evaluators load in stream mode (only the requested rows) is the memory loader's
    data, with resizing and channel conversion, and `first` limits."""
    options = {"image_size": 16, "channels": 3, "first": {"train": 100}}
    first = options.pop("first")
    a = load_splits(config(png_copy, "png_copy", "memory", **options), first=first)
    b = load_splits(config(png_copy, "png_copy", "stream", **options), first=first)
    assert b.loader == "stream" and a.sizes() == b.sizes() == {
        "train": 100,
        "val": 240,
        "test": 600,
    }
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels), split
        assert torch.equal(x.indices, y.indices), split
    assert a.image_shape == (3, 16, 16) and (a.mean, a.std) == (b.mean, b.std)


def test_stream_preflight_reads_metadata_and_a_bounded_sample(converted, tmp_path, monkeypatch):
    log = tmp_path / "access.jsonl"
    monkeypatch.setenv(ACCESS_LOG_ENV, str(log))
    cfg = DataConfig(name="parquet", root=converted, loader="stream", stats_images=300)
    plan = open_splits(cfg, ("train", "val"), purpose="preflight")
    assert plan.sizes() == {"train": 54000, "val": 6000}  # parquet's default val carve: 10%
    assert plan.stats_images == 300 and plan.image_shape == (1, 28, 28) and len(plan.classes) == 10
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {(e["split"], e["access"], e["images"]) for e in entries} == {
        ("train", "metadata", 301),  # one image for the shape, the statistics sample
        ("val", "metadata", 0),
    }
    # the memory loader's pre-flight, for contrast, materialises both splits
    open_splits(cfg.model_copy(update={"loader": "memory"}), ("train", "val"), purpose="mem")
    entries = [json.loads(line) for line in log.read_text().splitlines()][2:]
    assert {(e["split"], e["access"], e["images"]) for e in entries} == {
        ("train", "materialised", 54000),
        ("val", "materialised", 6000),
    }


def test_loader_resolution(converted):
    parquet = DataConfig(name="parquet", root=converted)
    assert resolve_loader(parquet) == "memory"  # 55 MB decoded: below the default 4 GiB
    small = DataConfig(name="parquet", root=converted, stream={"above_gib": 0.01})
    assert resolve_loader(small) == "stream"
    idx = DataConfig(name="fashion_mnist", download=False)
    assert resolve_loader(idx) == "memory"
    with pytest.raises(DataError, match=r"data\.loader=stream reads parquet files.*fashion_mnist"):
        resolve_loader(idx.model_copy(update={"loader": "stream"}))


def test_shards_of_a_split_folder_are_numbered_in_name_order(png_copy):
    from trainables.data.sources.parquet import open_set, resolve

    pset = open_set(resolve(png_copy), png_copy)
    assert [Path(p.path).name for p in pset.parts] == ["part-0.parquet", "part-1.parquet"]
    assert pset.num_rows == 3000 and pset.parts[0].row_groups[:2] == (256, 256)
    raw = load_raw(DataConfig(name="parquet", root=png_copy, channels=1))
    fmnist = load_raw(DataConfig(name="fashion_mnist", download=False))
    assert torch.equal(
        torch.cat([raw.train_images, raw.test_images]).sum(), fmnist.train_images[:3000].sum()
    )
