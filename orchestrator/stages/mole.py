"""The `mole` stage (TAS-LoRA): LoRA experts and an architecture router on the trained supernet.

Same machinery as the `supernet` stage (Ray Train, the same subnet on every rank each step,
checkpoints in `<run>/mole/epoch_NNNN/`, resume, a nested MLflow run). It starts from the
supernet stage's checkpoint, optionally fits the router group-wise first (group j of the
space's parameter-count quantiles prefers expert j), then trains experts and router with the
supernet frozen (`mole.freeze_supernet`). The recipe (batch, sampling, schedule, loss) is the
supernet's, with `mole.epochs` and `mole.lr`.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.stage import StageContext, StageSpec
from orchestrator.stages.supernet import (
    RECIPE_IGNORES,
    TRAINED_MODEL,
    TrainingPlan,
    run_training,
)

STAGE = "mole"
SPEC_FIELDS = ("experts", "rank", "alpha", "targets", "router_hidden", "router_per_layer_type")


def mole_spec(config: RaynasConfig) -> dict[str, Any]:
    """The MoLE spec (plain data) that builds the experts and router around the supernet."""
    dumped = config.mole.model_dump(mode="json")
    return {k: dumped[k] for k in SPEC_FIELDS}


def mole_plan(config: RaynasConfig, init_from: str) -> TrainingPlan:
    mole = config.mole
    train = config.supernet.model_copy(
        update={
            "epochs": mole.epochs,
            "lr": mole.lr,
            "warmup_epochs": min(config.supernet.warmup_epochs, mole.epochs / 4),
            "inject_failure": None,
        }
    )
    dumped = config.model_dump(mode="json")
    return TrainingPlan(
        stage=STAGE,
        train=train,
        resources=mole.resources,
        max_failures=config.supernet.max_failures,
        keep_checkpoints=config.supernet.keep_checkpoints,
        init_from=init_from,
        adapter=mole_spec(config),
        group_init_steps=mole.group_init_steps if mole.group_init else 0,
        freeze_base=mole.freeze_supernet,
        params={
            "mole": dumped["mole"],
            "init_from": init_from,
            "train": train.model_dump(mode="json"),
        },
    )


def run(ctx: StageContext) -> dict[str, Any]:
    """Train (or finish training) the experts and router on the trained supernet."""
    trained = ctx.input("supernet")
    return run_training(ctx, mole_plan(ctx.config, str(ctx.path(trained["checkpoint"]))))


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "mole", "supernet"),
    # the supernet's own length and lr reach this stage through its output's digest
    ignores=("mole.resources", *RECIPE_IGNORES, "supernet.epochs", "supernet.lr"),
    extends=("mole.epochs",),
    needs=("supernet",),
    provides={"supernet": TRAINED_MODEL},  # later stages score with the experts and router
    describe="train LoRA experts and the architecture router on the frozen supernet (TAS-LoRA)",
)
