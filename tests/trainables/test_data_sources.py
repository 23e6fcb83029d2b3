"""Each source on files it really reads: Fashion-MNIST's search order, CIFAR pickle batches,
image folders and parquet (written by `convert`, and foreign parquet with PNG bytes)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from trainables.data import DataConfig, load_raw, load_splits
from trainables.data.convert import convert
from trainables.data.sources import fashion_mnist
from trainables.errors import DataError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- fashion_mnist
def test_configured_root_comes_first(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYNAS_DATA", raising=False)
    for f in DEBIAN_FMNIST.iterdir():
        (tmp_path / f.name).symlink_to(f)
    raw = load_raw(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False))
    assert raw.origin == str(tmp_path)
    assert raw.train_images.shape == (60000, 1, 28, 28) and raw.test_images.shape == (
        10000,
        1,
        28,
        28,
    )


def test_raynas_data_env_comes_before_system_folder(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for f in DEBIAN_FMNIST.iterdir():  # uncompressed copies: both layouts are read
        with gzip.open(f) as src, open(folder / f.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    monkeypatch.setenv("RAYNAS_DATA", str(tmp_path))
    raw = load_raw(DataConfig(name="fashion_mnist", download=False))
    assert raw.origin == str(folder)
    reference = load_raw(DataConfig(name="fashion_mnist", root=str(DEBIAN_FMNIST), download=False))
    assert torch.equal(raw.test_images, reference.test_images)


def test_not_found_lists_every_place_and_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYNAS_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        fashion_mnist.locate(
            str(tmp_path / "nowhere"), download=False, system_dirs=(tmp_path / "sys",)
        )
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message
    assert str(tmp_path / "cache" / "fashion-mnist") in message
    assert str(tmp_path / "sys" / "fashion-mnist") in message
    assert "download (disabled" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_truncated_idx_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYNAS_DATA", raising=False)
    for f in DEBIAN_FMNIST.iterdir():
        (tmp_path / f.name).symlink_to(f)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    target.unlink()
    with gzip.open(DEBIAN_FMNIST / target.name) as src:
        data = src.read()
    with gzip.open(target, "wb") as dst:
        dst.write(data[:5000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
        load_raw(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False))


# ----------------------------------------------------------------------------- cifar
def _write_cifar(
    folder: Path,
    files: dict[str, int],
    label_key: bytes,
    meta_name: str,
    names_key: bytes,
    classes: int,
    protocol: int = pickle.DEFAULT_PROTOCOL,
):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, count in files.items():
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=count).tolist()
        with open(folder / name, "wb") as f:
            batch = {b"data": data, label_key: labels, b"batch_label": name.encode()}
            pickle.dump(batch, f, protocol=protocol)
        written[name] = (data, labels)
    with open(folder / meta_name, "wb") as f:
        pickle.dump({names_key: [f"class{i}".encode() for i in range(classes)]}, f, protocol)
    return written


def test_cifar10_batches_are_read_channel_first(tmp_path):
    files = {f"data_batch_{i}": 3 for i in range(1, 6)} | {"test_batch": 4}
    written = _write_cifar(
        tmp_path / "cifar-10-batches-py", files, b"labels", "batches.meta", b"label_names", 10
    )
    s = load_splits(DataConfig(name="cifar10", root=str(tmp_path), download=False, val_size=5))
    assert s.sizes() == {"train": 10, "val": 5, "test": 4}
    assert s.image_shape == (3, 32, 32) and s.classes[3] == "class3"
    raw = load_raw(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    data, labels = written["data_batch_1"]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert raw.train_images[0, 1, 2, 5] == data[0, 1024 + 2 * 32 + 5]
    assert raw.train_labels[:3].tolist() == labels
    assert torch.equal(raw.test_images.reshape(4, -1), torch.from_numpy(written["test_batch"][0]))


def test_cifar100_uses_fine_labels(tmp_path):
    written = _write_cifar(
        tmp_path, {"train": 6, "test": 2}, b"fine_labels", "meta", b"fine_label_names", 100
    )
    raw = load_raw(DataConfig(name="cifar100", root=str(tmp_path), download=False))
    assert len(raw.classes) == 100
    assert raw.train_labels.tolist() == written["train"][1]


def test_cifar_missing_batches_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYNAS_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        load_raw(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert "cifar10 not found" in str(info.value) and "cifar-10-batches-py" in str(info.value)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_batches_load_at_every_pickle_protocol(tmp_path, protocol):
    """Protocols 0-2 pickle bytes via _codecs.encode, 5 pickles arrays via _frombuffer."""
    written = _write_cifar(
        tmp_path,
        {"train": 3, "test": 2},
        b"fine_labels",
        "meta",
        b"fine_label_names",
        100,
        protocol,
    )
    raw = load_raw(DataConfig(name="cifar100", root=str(tmp_path), download=False))
    assert torch.equal(raw.train_images.reshape(3, -1), torch.from_numpy(written["train"][0]))
    assert raw.train_labels.tolist() == written["train"][1] and raw.classes[7] == "class7"


def _python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """What the official files hold: cPickle protocol 2 from Python 2 and numpy 1 (global
    numpy.core.multiarray._reconstruct, str as BINSTRING), written opcode by opcode."""

    def binstring(b: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(b)) + b

    def binint(i: int) -> bytes:
        return b"J" + struct.pack("<i", i)

    rows, cols = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + binstring(b"b")
        + b"\x87R(K\x01" + binint(rows) + binint(cols) + b"\x86"
        + b"cnumpy\ndtype\n" + binstring(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + binstring(b"|") + b"NNN" + binint(-1) + binint(-1) + b"K\x00tb"
        + b"\x89" + binstring(data.tobytes()) + b"tb"
    )  # fmt: skip
    label_list = b"](" + b"".join(binint(v) for v in labels) + b"e"
    return b"\x80\x02}(" + binstring(b"data") + array + binstring(b"labels") + label_list + b"u."


def test_cifar_batches_pickled_by_python2_and_numpy1_load(tmp_path):
    written = _write_cifar(
        tmp_path, {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 2},
        b"labels", "batches.meta", b"label_names", 10,
    )  # fmt: skip
    data, labels = written["data_batch_2"]
    (tmp_path / "data_batch_2").write_bytes(_python2_batch(data, labels))
    raw = load_raw(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert torch.equal(raw.train_images[2:4].reshape(2, -1), torch.from_numpy(data))
    assert raw.train_labels[2:4].tolist() == labels


class _Payload:
    """Unpickling this calls ``call(*args)``: what a hostile "CIFAR batch" would do."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("target", ["data_batch_3", "batches.meta"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "numpy.load"])
def test_cifar_pickle_naming_any_other_global_is_refused_unrun(tmp_path, payload, target):
    folder = tmp_path / "cifar-10-batches-py"
    files = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 2}
    _write_cifar(folder, files, b"labels", "batches.meta", b"label_names", 10)
    marker = tmp_path / "pwned"
    calls = {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').write('x')"),
        "numpy.load": _Payload(np.load, str(marker)),
    }
    with open(folder / target, "wb") as f:
        pickle.dump({b"data": calls[payload], b"labels": [0, 1]}, f)
    with pytest.raises(DataError) as info:
        load_raw(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    message = str(info.value)
    assert not marker.exists()
    assert "\n" not in message
    assert str(folder / target) in message and "is not a CIFAR batch" in message
    assert "refusing the pickled global" in message
    assert payload.split(".")[1] in message  # pickled as posix.system, builtins.eval, ...


# ----------------------------------------------------------------------------- imagefolder
def _image_tree(
    root: Path, classes: list[str], per_class: int, size=(12, 10), seed=0
) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays: dict[str, list[np.ndarray]] = {}
    for name in classes:
        (root / name).mkdir(parents=True)
        arrays[name] = []
        for i in range(per_class):
            array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{i:03d}.png")
            arrays[name].append(array)
    return arrays


def test_imagefolder_decodes_pixels_exactly(tmp_path):
    arrays = _image_tree(tmp_path, ["cat", "ant", "bee"], per_class=5)
    raw = load_raw(DataConfig(name="imagefolder", root=str(tmp_path), test_size=3))
    assert raw.classes == ("ant", "bee", "cat")
    s = load_splits(DataConfig(name="imagefolder", root=str(tmp_path), test_size=3, val_size=3))
    assert s.sizes() == {"train": 9, "val": 3, "test": 3}
    assert s.image_shape == (3, 10, 12)
    # every decoded image equals one written image of its class (PNG is lossless)
    for images, labels in ((s.train.images, s.train.labels), (s.test.images, s.test.labels)):
        for image, label in zip(images, labels, strict=True):
            written = arrays[s.classes[label]]
            assert any(np.array_equal(image.permute(1, 2, 0).numpy(), w) for w in written)


def test_imagefolder_train_test_layout_and_resize(tmp_path):
    _image_tree(tmp_path / "train", ["a", "b"], per_class=6, size=(20, 14))
    _image_tree(tmp_path / "val", ["a", "b"], per_class=2, size=(20, 14), seed=1)
    s = load_splits(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, val_size=2))
    assert s.sizes() == {"train": 10, "val": 2, "test": 4}
    assert s.image_shape == (3, 8, 8)
    with pytest.raises(DataError, match="already is the test split"):
        load_raw(DataConfig(name="imagefolder", root=str(tmp_path), test_size=2))


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    _image_tree(tmp_path / "a", ["x"], per_class=2, size=(8, 8))
    _image_tree(tmp_path / "b", ["y"], per_class=2, size=(9, 8))
    root = tmp_path / "tree"
    root.mkdir()
    shutil.move(tmp_path / "a" / "x", root / "x")
    shutil.move(tmp_path / "b" / "y", root / "y")
    with pytest.raises(DataError, match="differ in size.*set data.image_size"):
        load_raw(DataConfig(name="imagefolder", root=str(root)))
    assert load_raw(
        DataConfig(name="imagefolder", root=str(root), image_size=6)
    ).train_images.shape[1:] == (3, 6, 6)


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    _image_tree(tmp_path, ["a", "b"], per_class=2)
    (tmp_path / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image .*bad.png"):
        load_raw(DataConfig(name="imagefolder", root=str(tmp_path)))


# ----------------------------------------------------------------------------- parquet
def test_parquet_round_trip_reproduces_every_split(tmp_path):
    original = DataConfig(name="digits", split_seed=3)
    out = tmp_path / "digits-parquet"
    rows = convert(original, str(out))
    assert rows == {"train": 1438, "test": 359}
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet"]
    a = load_splits(original)
    b = load_splits(DataConfig(name="parquet", root=str(out), split_seed=3))
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images), split
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels), split
    assert a.classes == b.classes and a.mean == b.mean


def test_parquet_from_imagefolder_keeps_classes_and_resize(tmp_path):
    _image_tree(tmp_path / "tree", ["x", "y"], per_class=4, size=(16, 16))
    convert(
        DataConfig(name="imagefolder", root=str(tmp_path / "tree"), image_size=8, test_size=2),
        str(tmp_path / "pq"),
    )
    raw = load_raw(DataConfig(name="parquet", root=str(tmp_path / "pq")))
    assert raw.classes == ("x", "y")
    assert raw.train_images.shape == (6, 3, 8, 8) and raw.test_images.shape == (2, 3, 8, 8)


def test_convert_refuses_to_overwrite_and_leaves_nothing_partial(tmp_path):
    out = tmp_path / "out"
    convert(DataConfig(name="digits"), str(out))
    before = (out / "train.parquet").stat().st_mtime_ns
    with pytest.raises(DataError, match="already exists"):
        convert(DataConfig(name="digits"), str(out))
    assert (out / "train.parquet").stat().st_mtime_ns == before
    convert(DataConfig(name="digits", split_seed=1), str(out), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_foreign_parquet_with_png_bytes_is_decoded(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8) for _ in range(10)]

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    # the Hugging Face datasets layout: image is a struct {bytes, path}
    table = pa.table(
        {
            "image": [{"bytes": png(a), "path": f"{i}.png"} for i, a in enumerate(arrays)],
            "label": pa.array([i % 3 for i in range(10)], pa.int32()),
        }
    )
    pq.write_table(table, tmp_path / "data.parquet")
    raw = load_raw(DataConfig(name="parquet", root=str(tmp_path / "data.parquet"), test_size=2))
    assert raw.classes == ("0", "1", "2")
    decoded = torch.cat([raw.train_images, raw.test_images])
    assert sorted(map(bytes, decoded.permute(0, 2, 3, 1).reshape(10, -1).numpy())) == sorted(
        bytes(a.reshape(-1)) for a in arrays
    )


def test_parquet_without_label_column_is_one_clear_line(tmp_path):
    pq.write_table(pa.table({"image": [b"x"], "target": [1]}), tmp_path / "train.parquet")
    with pytest.raises(
        DataError, match=r"lacks column\(s\) \['label'\].*has \['image', 'target'\]"
    ):
        load_raw(DataConfig(name="parquet", root=str(tmp_path)))
