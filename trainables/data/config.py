"""The `data:` section of a run config.

It lives beside the loaders (not in the orchestrator) so that Ray workers receive the exact
object the loaders read, and there is one definition of every data option.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Normalization = Literal["data", "imagenet", "none", "custom"]


class SubsetConfig(BaseModel):
    """Seeded random subsets of each split, for quick runs. `null` keeps the whole split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: int | None = Field(None, ge=1, description="images kept from the train split")
    val: int | None = Field(None, ge=1, description="images kept from the val split")
    test: int | None = Field(None, ge=1, description="images kept from the test split")


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
