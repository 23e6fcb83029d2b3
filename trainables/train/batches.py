"""The one interface the training loop reads data through, for either loader.

`EpochBatches.epoch(epoch)` yields this rank's `steps` normalised `(x, y)` training batches of
an epoch, shuffled with a seed of (seed, epoch), the last partial batch dropped;
`EvalBatches.batches()` yields this rank's share of a split for scoring, every image once
across the ranks. The memory loader's versions index in-memory tensors (`DistributedSampler`,
exactly the order raynas always used); the stream versions iterate Ray Train dataset shards
(`trainables/data/ingest.py`). Both give the same images per split; only the shuffled order
differs between them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from trainables.data.tensors import Normalizer

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochBatches(Protocol):
    steps: int  # batches per epoch on this rank, the same on every rank
    size: int  # images of the split (all ranks together)

    def epoch(self, epoch: int) -> Iterator[Batch]: ...


class EvalBatches(Protocol):
    size: int  # images of the whole split (all ranks together)

    def batches(self) -> Iterator[Batch]: ...


class MemoryBatches:
    """An in-memory dataset's shard of rank `rank`: DistributedSampler + DataLoader."""

    def __init__(self, dataset: Dataset, rank: int, world: int, batch: int, seed: int) -> None:
        self.size = len(dataset)  # type: ignore[arg-type]
        self.sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.loader = DataLoader(dataset, batch_size=batch, sampler=self.sampler, drop_last=True)
        self.steps = len(self.loader)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        return iter(self.loader)


class MemoryEval:
    """Every `world`-th image of an in-memory split from `rank`, in batches."""

    def __init__(self, dataset, rank: int, world: int, batch: int) -> None:
        self.dataset, self.batch = dataset, batch
        self.size = len(dataset)
        self.indices = list(range(rank, len(dataset), world))

    def batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.indices), self.batch):
            yield self.dataset.batch(self.indices[start : start + self.batch])


def stream_steps(rows: int, world: int, batch: int) -> int:
    """Steps per epoch of an equal streaming split: `rows // world` rows per rank."""
    return (rows // world) // batch


class StreamBatches:
    """A Ray Train dataset shard (equal split) as epochs of normalised batches."""

    def __init__(
        self,
        shard,
        rows: int,
        rank: int,
        world: int,
        batch: int,
        seed: int,
        normalizer: Normalizer,
        shuffle_buffer: int,
        name: str = "train",
    ) -> None:
        self.shard, self.rank, self.batch, self.seed = shard, rank, batch, seed
        self.normalize, self.name = normalizer, name
        self.size = rows
        self.steps = stream_steps(rows, world, batch)
        self.buffer = max(shuffle_buffer, batch)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        from trainables.data.ingest import iter_images, mix_seed

        count = 0
        for batch in iter_images(
            self.shard,
            self.batch,
            drop_last=True,
            local_shuffle_buffer_size=self.buffer,
            local_shuffle_seed=mix_seed("local-shuffle", self.seed, epoch, self.rank),
        ):
            count += 1
            if count <= self.steps:  # (an equal split never gives more; drain it if it did)
                yield self.normalize(batch["image"]), batch["label"]
        if count != self.steps:
            raise RuntimeError(
                f"rank {self.rank} streamed {count} batches of the {self.name} split in epoch "
                f"{epoch}, expected {self.steps} (its equal share of {self.size} images)"
            )


class StreamEval:
    """A Ray Train dataset shard (unequal split: every image once) in normalised batches."""

    def __init__(self, shard, size: int, batch: int, normalizer: Normalizer) -> None:
        self.shard, self.size, self.batch, self.normalize = shard, size, batch, normalizer

    def batches(self) -> Iterator[Batch]:
        from trainables.data.ingest import iter_images

        for batch in iter_images(self.shard, self.batch, drop_last=False):
            yield self.normalize(batch["image"]), batch["label"]


class Cycle:
    """Endless batches of an `EpochBatches`, a new seeded epoch each pass (the bi-level
    selector's carve-out is smaller than or equal to the weights' split, so it wraps around)."""

    def __init__(self, batches: EpochBatches) -> None:
        self.batches = batches
        self.epoch = 0
        self._it: Iterator[Batch] | None = None

    def next(self) -> Batch:
        while True:
            if self._it is None:
                self._it = iter(self.batches.epoch(self.epoch))
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
