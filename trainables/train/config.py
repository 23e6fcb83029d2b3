"""The training hyperparameters of the `supernet` stage, read by the worker loop.

Defined beside the loop (like `DataConfig`) so the worker gets exactly what it reads; the
orchestrator's schema extends it with where the workers run and how failures are retried.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FailureInjection(BaseModel):
    """Testing hook: worker `rank` raises once at `step` of `epoch` (local run dirs only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch: int = Field(..., ge=1)
    step: int = Field(0, ge=0)
    rank: int = Field(0, ge=0)


class SelectorTrainConfig(BaseModel):
    """How the operation selector of a cell supernet (IT-NAS's indicator tokens, DARTS's
    alphas) is trained in `mixed` sampling. Defaults: DARTS's architecture optimizer (Adam,
    lr 3e-4, betas (0.5, 0.999), weight decay 1e-3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["single", "bilevel"] = Field(
        "bilevel",
        description="single: weights and selector step on the same train batch; bilevel: the "
        "selector steps on its own carve-out of TRAIN first (first-order alternation, as DARTS)",
    )
    split: float = Field(
        0.5, gt=0, lt=1, description="bilevel: fraction of TRAIN carved out for the selector"
    )
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(1e-3, ge=0)


class DistillConfig(BaseModel):
    """Distillation from a dense teacher (FLORA: the uncompressed model). The loss is
    ``(1 - weight) x CE(labels) + weight x T^2 x KL(teacher_T || student_T)``; ``weight`` 0
    switches it off, 1 with ``temperature`` 1 is FLORA's soft-target cross-entropy (up to a
    constant)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(0.0, ge=0, le=1, description="0: off; 1: soft targets only")
    temperature: float = Field(1.0, gt=0)


class SupernetTrainConfig(BaseModel):
    """One-shot supernet training (AutoFormer's recipe, sandwich sampling optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1, description="global batch, split evenly across workers")
    lr: float | None = Field(
        None, gt=0, description="peak learning rate; null: 5e-4 x batch_size / 512"
    )
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_grad: float | None = Field(5.0, gt=0, description="max gradient norm; null: no clipping")
    sampling: Literal["uniform", "sandwich", "mixed"] = Field(
        "uniform",
        description="uniform: one random subnet per step; sandwich: largest + smallest + random; "
        "mixed: every op on every edge, mixed by the supernet's selector (cell spaces)",
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="the weights' optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    selector: SelectorTrainConfig = Field(default_factory=SelectorTrainConfig)
    distill: DistillConfig = Field(
        default_factory=DistillConfig,
        description="distillation from the dense model a `dense` stage output provides",
    )
    eval_subnets: int = Field(
        3, ge=0, description="fixed random subnets evaluated on val every epoch"
    )
    eval_batch_size: int = Field(512, ge=1)
    checkpoint_every: int = Field(
        1, ge=1, description="epochs between checkpoints (the last is always kept)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPU, fp32 on CPU"
    )
    record_archs: bool = Field(
        False, description="each rank writes the archs it trained on to supernet/archs/"
    )
    inject_failure: FailureInjection | None = Field(None, description="testing hook; leave unset")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else 5e-4 * self.batch_size / 512

    @property
    def bilevel(self) -> bool:
        return self.sampling == "mixed" and self.selector.mode == "bilevel"
