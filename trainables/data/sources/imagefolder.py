"""Any class-per-folder tree of images (torchvision's ImageFolder layout).

`data.root` is either the class tree itself (a test split is then carved by `data.test_size`)
or a folder holding `train/` and `test/` class trees (`val/` stands in for `test/` when there
is no `test/`, as in ImageNet's layout). Images are decoded once, in threads, to uint8 tensors;
with `data.image_size` each is resized on its shorter side and centre-cropped.
The whole split is held in memory: for large sets convert to parquet shards.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from trainables.data.config import DataConfig
from trainables.data.registry import register_dataset
from trainables.data.tensors import RawDataset
from trainables.errors import DataError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def scan(tree: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """Class names (sorted sub-folders) and (file, class) pairs in a sorted, stable order."""
    classes = sorted(p.name for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = []
    for name in classes:
        for dirpath, dirnames, filenames in os.walk(tree / name):
            dirnames.sort()
            items.extend(
                (Path(dirpath) / f, name)
                for f in sorted(filenames)
                if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")
            )
    return classes, items


def decode(path: Path, mode: str, size: int | None) -> np.ndarray:
    """One image as uint8 `[C, H, W]`; resized (shorter side) and centre-cropped to `size`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None:
                w, h = img.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
                left, top = (nw - size) // 2, (nh - size) // 2
                img = img.crop((left, top, left + size, top + size))
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_tree(
    tree: Path, classes: list[str], mode: str, size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    found, items = scan(tree)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{tree} has class folders {unknown} that the train split lacks")
    if not items:
        raise DataError(
            f"{tree} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders"
        )
    index = {name: i for i, name in enumerate(classes)}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(lambda item: decode(item[0], mode, size), items))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"images under {tree} differ in size ({', '.join(str(s[1:]) for s in sorted(shapes)[:3])}, ...); "
            "set data.image_size to resize them to one square size"
        )
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([index[name] for _, name in items], dtype=torch.int64)
    return images, labels


@register_dataset(
    "imagefolder",
    "any class-per-folder image tree at data.root (root/<class>/*.png, or root/train + root/test)",
    default_val_size=0.1,
    has_test_split=False,
    default_test_size=0.2,
)
def load(config: DataConfig) -> RawDataset:
    if config.root is None:
        raise DataError("data.root is required for imagefolder: a folder of class sub-folders")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={config.root!r} is not a folder")
    mode = "L" if config.channels == 1 else "RGB"
    train_tree = root / "train" if (root / "train").is_dir() else root
    test_tree = next(
        (root / n for n in ("test", "val") if train_tree != root and (root / n).is_dir()), None
    )
    classes, _ = scan(train_tree)
    if not classes:
        raise DataError(f"{train_tree} has no class sub-folders; expected <root>/<class>/<image>")
    train_images, train_labels = read_tree(train_tree, classes, mode, config.image_size)
    test_images = test_labels = None
    if test_tree is not None:
        if config.test_size is not None:
            raise DataError(
                f"data.test_size={config.test_size:g}: {test_tree} already is the test split; allowed: null"
            )
        test_images, test_labels = read_tree(test_tree, classes, mode, config.image_size)
    return RawDataset(
        train_images, train_labels, test_images, test_labels, tuple(classes), str(root)
    )
