"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no test split of its own)."""

from __future__ import annotations

import numpy as np
import torch

from trainables.data.config import DataConfig
from trainables.data.registry import register_dataset
from trainables.data.tensors import RawDataset
from trainables.errors import DataError


@register_dataset(
    "digits",
    "scikit-learn's bundled 8x8 grey digits, 10 classes, 1797 images (test carved by data.test_size)",
    default_val_size=0.1,
    has_test_split=False,
    default_test_size=0.2,
)
def load(config: DataConfig) -> RawDataset:
    if config.root is not None:
        raise DataError(f"data.root={config.root!r}: digits ships with scikit-learn; allowed: null")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values are 0..16; spread them over 0..255 like every other uint8 source
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return RawDataset(
        train_images=torch.from_numpy(images).unsqueeze(1),
        train_labels=torch.from_numpy(bunch.target.astype(np.int64)),
        test_images=None,
        test_labels=None,
        classes=tuple(str(d) for d in range(10)),
        origin="scikit-learn (bundled)",
    )
