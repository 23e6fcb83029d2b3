"""Fashion-MNIST from its four IDX files (gzip-compressed or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from trainables.data import locations
from trainables.data.config import DataConfig
from trainables.data.locations import SYSTEM_DATA_DIRS
from trainables.data.registry import register_dataset
from trainables.data.tensors import RawDataset
from trainables.errors import DataError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or set data.root "
    "to a folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST container format), gzip or plain."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: {len(data)} bytes, header promises {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The four files in `folder` (or torchvision's `FashionMNIST/raw` below it), else None."""
    for base in (folder, folder / "FashionMNIST" / "raw"):
        found = {}
        for key, stem in FILES.items():
            for name in (stem + ".gz", stem):
                if (base / name).is_file():
                    found[key] = base / name
                    break
        if len(found) == len(FILES):
            return found
    return None


def _read(files: dict[str, Path], origin: str) -> RawDataset:
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{origin}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
    return RawDataset(
        train_images=torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        classes=CLASSES,
        origin=origin,
    )


def _download(target: Path) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(target), train=True, download=True)


def locate(
    root: str | None, download: bool, system_dirs: tuple[Path, ...] = SYSTEM_DATA_DIRS
) -> tuple[dict[str, Path], str]:
    """Find (or download) the IDX files; return them and where they came from."""
    return locations.locate(
        "fashion_mnist", "fashion-mnist", root, _find_files, "IDX files",
        _download if download else None, INSTALL_HINT, system_dirs,
    )  # fmt: skip


@register_dataset(
    "fashion_mnist",
    "Zalando Fashion-MNIST, 28x28 grey, 10 classes, 60000 train + 10000 test (IDX files)",
    default_val_size=5000,
    has_test_split=True,
)
def load(config: DataConfig) -> RawDataset:
    files, origin = locate(config.root, config.download)
    return _read(files, origin)
