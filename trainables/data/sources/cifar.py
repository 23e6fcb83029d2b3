"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches.

The batches are read directly (not through torchvision's dataset class, which insists on the
official checksums), so any folder in that format works; torchvision is used only to download.
They are unpickled by :class:`_CifarUnpickler`, which resolves only the few globals a CIFAR batch
needs (numpy's array and dtype reconstructors), so a file in the data folder cannot run code.
"""

from __future__ import annotations

import importlib
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


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that no CIFAR batch needs."""


def _latin1_bytes(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, and nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _RefusedGlobal(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol 0-2 pickles use it for ``b""``, and nothing else."""
    if args:
        raise _RefusedGlobal(f"builtins.bytes with {len(args)} argument(s)")
    return b""


def _numpy_global(submodule: str, name: str) -> object:
    """``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<submodule>.<name>``
    (numpy 1), whichever this numpy has, whichever of the two paths the pickle names."""
    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise _RefusedGlobal(f"numpy.core.{submodule}.{name} (not in this numpy)")


# Everything a CIFAR batch pickled by Python 2 or 3, numpy 1 or 2, protocol 0-5 refers to:
# the array and dtype reconstructors, and the bytes helpers of protocols 0-2.
_NUMPY_CORE = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}
_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_bytes,
    ("builtins", "bytes"): lambda: _empty_bytes,
}
_ALLOWED |= {
    (f"{base}.{sub}", name): lambda sub=sub, name=name: _numpy_global(sub, name)
    for base in ("numpy.core", "numpy._core")
    for sub, name in _NUMPY_CORE
}


# What a truncated, corrupt or foreign pickle raises while the allowed globals rebuild it.
_READ_ERRORS = (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError)  # fmt: skip


class _CifarUnpickler(pickle.Unpickler):
    """Loads numpy arrays, bytes, str, lists, dicts, numbers and tuples; refuses every other
    global (``os.system``, ``builtins.eval``, any class), so unpickling cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return resolve()


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            loaded = _CifarUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DataError(
            f"{path} is not a CIFAR batch: refusing the pickled global {str(exc)!r} (only numpy "
            "arrays, bytes, str, lists, dicts and numbers are loaded from CIFAR files)"
        ) from None
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise DataError(
            f"{path} is not a CIFAR batch: it holds a {type(loaded).__name__}, not a dict"
        )
    return loaded


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
