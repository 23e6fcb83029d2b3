"""In-memory image tensors: the one representation every dataset is decoded into.

Images are kept as uint8 `[N, C, H, W]` tensors (decoded once); conversion to float and
normalisation happen per batch, vectorised, so no per-sample Python or PIL work sits on the
training hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RawDataset:
    """What a source hands back: decoded images and labels, before any carving.

    `test_images` is None for datasets that ship no test split (the loader carves one).
    """

    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    classes: tuple[str, ...]
    origin: str  # where the data was read from, shown to the user

    def __post_init__(self) -> None:
        _check_pair(self.train_images, self.train_labels, "train")
        if (self.test_images is None) != (self.test_labels is None):
            raise ValueError("test images and labels must both be given or both be None")
        if self.test_images is not None:
            _check_pair(self.test_images, self.test_labels, "test")
            if self.test_images.shape[1:] != self.train_images.shape[1:]:
                raise DataError(
                    f"{self.origin}: "
                    f"train images are {tuple(self.train_images.shape[1:])} "
                    f"but test images are {tuple(self.test_images.shape[1:])}; "
                    "set data.image_size to resize both to one square size"
                )


def _check_pair(images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"{split} images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"{split} labels must be int64 [{images.shape[0]}], got {labels.dtype} {tuple(labels.shape)}"
        )


class Normalizer:
    """uint8 `[B, C, H, W]` -> float32 `(x / 255 - mean) / std`, the same op for every loader."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # (x / 255 - mean) / std == x * scale + shift: one fused op per batch after the cast
        std_t = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, images.float(), self._scale)


class ImageTensorDataset(torch.utils.data.Dataset):
    """A map-style dataset over uint8 images that normalises on access.

    `__getitems__` lets a `DataLoader` fetch a whole batch with one indexing operation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        indices: torch.Tensor | None = None,
    ) -> None:
        _check_pair(images, labels, "dataset")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
        self.images = images
        self.labels = labels
        # indices of these images in the source split they were carved from (for provenance)
        self.indices = indices if indices is not None else torch.arange(len(labels))
        self._normalizer = Normalizer(mean, std)
        self.mean, self.std = self._normalizer.mean, self._normalizer.std

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, C, H, W]` -> normalised float32."""
        return self._normalizer(images)

    def batch(self, index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised images and labels at `index`, as two batched tensors."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self.normalize(self.images[index]), self.labels[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([i])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.batch(indices)
        return list(zip(x.unbind(0), y.unbind(0), strict=True))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 `[N, C, H, W]` to `size` x `size` (bilinear, antialiased), in chunks."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(
            part, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (
            (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        )
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def pixel_sums(images: torch.Tensor, chunk: int = 8192) -> tuple[int, list[int], list[int]]:
    """(pixels per channel, per-channel sum, per-channel sum of squares) of uint8 images, as
    exact integers: added up in any order or chunking they give the same statistics."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.int64)
    total_sq = torch.zeros(channels, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.int64)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    return count, total.tolist(), total_sq.tolist()


def stats_from_sums(
    count: int, total: Sequence[int], total_sq: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units from :func:`pixel_sums` (exact until the last
    division, so both loaders give bit-identical statistics)."""
    if count == 0:
        raise ValueError("no pixels to compute statistics from")
    mean = tuple(t / (255.0 * count) for t in total)
    # var * (255 count)^2 = count * sum(x^2) - sum(x)^2, exactly in integers
    var = tuple(
        max(count * q - t * t, 0) / (255.0 * count) ** 2
        for t, q in zip(total, total_sq, strict=True)
    )
    std = tuple(max(v, 1e-12) ** 0.5 for v in var)
    return mean, std


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    return stats_from_sums(*pixel_sums(images))
