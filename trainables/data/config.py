"""The `data:` section of a run config.

It lives beside the loaders (not in the orchestrator) so that Ray workers receive the exact
object the loaders read, and there is one definition of every data option.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Normalization = Literal["data", "imagenet", "none", "custom"]
Loader = Literal["memory", "stream", "auto"]


class SubsetConfig(BaseModel):
    """Seeded random subsets of each split, for quick runs. `null` keeps the whole split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: int | None = Field(None, ge=1, description="images kept from the train split")
    val: int | None = Field(None, ge=1, description="images kept from the val split")
    test: int | None = Field(None, ge=1, description="images kept from the test split")


class StreamConfig(BaseModel):
    """How `loader: stream` feeds the training workers (Ray Data; see `trainables/data/stream.py`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    above_gib: float = Field(
        4.0,
        gt=0,
        description="loader=auto streams when the decoded images of the parquet files (what the "
        "memory loader would hold in every process) exceed this many GiB",
    )
    shuffle_buffer: int = Field(
        4096,
        ge=1,
        description="rows in each training worker's seeded local shuffle buffer (on top of the "
        "per-epoch shuffled row-group order)",
    )
    block_rows: int = Field(1024, ge=1, description="rows per Ray Data block")
    decode_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs each Ray Data read/decode task reserves; the cluster needs at least this "
        "many beside the training workers' CPUs",
    )


class DataConfig(BaseModel):
    """Which dataset, where it lives, how it is split and preprocessed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., description="dataset name; `raynas data list` shows them")
    root: str | None = Field(
        None, description="folder, file or s3:// / gs:// URI holding the data; see each dataset"
    )
    download: bool = Field(True, description="allow a download when the data is not found locally")
    val_size: float | None = Field(
        None,
        gt=0,
        description="val images carved from train: a count (>= 1) or a fraction (< 1); "
        "null uses the dataset's default",
    )
    test_size: float | None = Field(
        None,
        gt=0,
        description="only for datasets without a test split: a count (>= 1) or a fraction (< 1)",
    )
    split_seed: int = Field(0, ge=0, description="seed of the val/test carve-outs and subsets")
    subset: SubsetConfig = Field(default_factory=SubsetConfig)
    image_size: int | None = Field(
        None, ge=4, le=1024, description="resize to this square size once at load; null = native"
    )
    channels: Literal[1, 3] | None = Field(None, description="convert to 1 (grey) or 3 (RGB)")
    normalize: Normalization = Field(
        "data", description="data: mean/std of the train split; imagenet; none; custom (mean/std)"
    )
    mean: tuple[float, ...] | None = Field(None, description="per-channel mean for `custom`")
    std: tuple[float, ...] | None = Field(None, description="per-channel std for `custom`")
    stats_images: int = Field(
        10000,
        ge=1,
        description="normalize=data: mean/std from a seeded sample of this many train images "
        "(all of them when the split is smaller); the same sample in both loaders",
    )
    loader: Loader = Field(
        "auto",
        description="memory: every process decodes its splits into RAM; stream: training reads "
        "the parquet files through Ray Data shards (the `parquet` dataset only); auto: stream "
        "when the decoded parquet data exceeds stream.above_gib, else memory",
    )
    stream: StreamConfig = Field(default_factory=StreamConfig)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        for field in ("val_size", "test_size"):
            value = getattr(self, field)
            if value is not None and value >= 1 and value != int(value):
                raise ValueError(
                    f"{field}={value}: a count must be a whole number; use a value < 1 for a fraction"
                )
        if self.normalize == "custom":
            if self.mean is None or self.std is None:
                raise ValueError("normalize=custom needs both `mean` and `std`")
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"std={list(self.std)}: every value must be > 0")
        elif self.mean is not None or self.std is not None:
            raise ValueError(f"mean/std are only used with normalize=custom (got {self.normalize})")
        return self
