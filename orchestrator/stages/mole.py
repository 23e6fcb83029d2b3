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
from orchestrator.stages import supernet as supernet_stage
from orchestrator.stages.supernet import TrainingPlan, run_training_stage
from orchestrator.tracking import Tracker
from trainables.train import checkpoint as ckpt

STAGE = "mole"
SPEC_FIELDS = ("experts", "rank", "alpha", "targets", "router_hidden", "router_per_layer_type")


def mole_spec(config: RaynasConfig) -> dict[str, Any] | None:
    """The MoLE spec of a run whose stages include `mole`, else None (a plain supernet)."""
    if STAGE not in config.stage_names:
        return None
    dumped = config.mole.model_dump(mode="json")
    return {k: dumped[k] for k in SPEC_FIELDS}


def mole_plan(config: RaynasConfig) -> TrainingPlan:
    trained = supernet_stage.read_result(config.run_path)
    if trained is None:
        raise ckpt.CheckpointError(
            f"no trained supernet in {supernet_stage.stage_dir(config.run_path)}; the mole stage "
            "starts from it: run `raynas run CONFIG` (or `raynas train CONFIG`) first"
        )
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
        init_from=trained["checkpoint"],
        mole=mole_spec(config),
        group_init_steps=mole.group_init_steps if mole.group_init else 0,
        freeze_base=mole.freeze_supernet,
        params={
            "mole": dumped["mole"],
            "init_from": trained["checkpoint"],
            "train": train.model_dump(mode="json"),
        },
    )


def run_mole_stage(config: RaynasConfig, tracker: Tracker | None = None) -> dict[str, Any]:
    """Train (or finish training) the experts and router; returns the stage result."""
    return run_training_stage(config, mole_plan(config), tracker)


def final_checkpoint(config: RaynasConfig) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint the search and export use, and its MoLE spec: the mole stage's for a
    TAS-LoRA run, else the supernet's (None, None when it has not been trained)."""
    spec = mole_spec(config)
    done = supernet_stage.read_result(config.run_path, STAGE if spec else supernet_stage.STAGE)
    return (done["checkpoint"] if done else None), spec
