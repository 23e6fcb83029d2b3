"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches.

The batches are read directly (not through torchvision's dataset class, which insists on the
official checksums), so any folder in that format works; torchvision is used only to download.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.data import locations
from trainables.data.config import DataConfig
from trainables.data.locations import SYSTEM_DATA_DIRS
from trainables.data.registry import register_dataset
from trainables.data.tensors import RawDataset
from trainables.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    name: str  # registry name and folder under $RAYNAS_DATA
    folder: str  # the folder the official archive unpacks to
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    torchvision_class: str


CIFAR10 = CifarLayout(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch", "batches.meta", b"labels", b"label_names", "CIFAR10",
)  # fmt: skip
CIFAR100 = CifarLayout(
    "cifar100", "cifar-100-python", ("train",), "test", "meta",
    b"fine_labels", b"fine_label_names", "CIFAR100",
)  # fmt: skip


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from None


def _read_batches(
    folder: Path, files: tuple[str, ...], layout: CifarLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        if b"data" not in batch or layout.label_key not in batch:
            raise DataError(
                f"{folder / name} lacks the keys b'data' and {layout.label_key!r}; "
                f"is this a {layout.name} python-version batch?"
            )
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{folder / name}: data has shape {data.shape}, expected [N, 3072]")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[layout.label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _find(folder: Path, layout: CifarLayout) -> Path | None:
    for base in (folder / layout.folder, folder):
        needed = (*layout.train_files, layout.test_file, layout.meta_file)
        if all((base / name).is_file() for name in needed):
            return base
    return None


def locate(
    root: str | None,
    download: bool,
    layout: CifarLayout,
    system_dirs: tuple[Path, ...] = SYSTEM_DATA_DIRS,
) -> Path:
    def fetch(target: Path) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, layout.torchvision_class)(
            str(target), train=True, download=True
        )

    found, _ = locations.locate(
        layout.name, layout.name, root, lambda folder: _find(folder, layout), f"{layout.folder} batches",
        fetch if download else None,
        f"Set data.root to a folder holding {layout.folder}/ (the python version of the dataset)", system_dirs,
    )  # fmt: skip
    return found


def load_cifar(config: DataConfig, layout: CifarLayout) -> RawDataset:
    folder = locate(config.root, config.download, layout)
    train_images, train_labels = _read_batches(folder, layout.train_files, layout)
    test_images, test_labels = _read_batches(folder, (layout.test_file,), layout)
    meta = _unpickle(folder / layout.meta_file)
    if layout.names_key not in meta:
        raise DataError(f"{folder / layout.meta_file} lacks {layout.names_key!r}")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key])
    top = int(max(train_labels.max(), test_labels.max()))
    if top >= len(classes) or int(min(train_labels.min(), test_labels.min())) < 0:
        raise DataError(
            f"{folder}: labels span 0..{top} but the meta file names {len(classes)} classes"
        )
    return RawDataset(train_images, train_labels, test_images, test_labels, classes, str(folder))


@register_dataset(
    "cifar10",
    "CIFAR-10, 32x32 RGB, 10 classes, 50000 train + 10000 test (python pickle batches)",
    default_val_size=5000,
    has_test_split=True,
)
def load_cifar10(config: DataConfig) -> RawDataset:
    return load_cifar(config, CIFAR10)


@register_dataset(
    "cifar100",
    "CIFAR-100, 32x32 RGB, 100 fine classes, 50000 train + 10000 test (python pickle batches)",
    default_val_size=5000,
    has_test_split=True,
)
def load_cifar100(config: DataConfig) -> RawDataset:
    return load_cifar(config, CIFAR100)
