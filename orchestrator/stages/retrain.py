"""The `retrain` stage (IT-NAS): the selected arch trained from scratch on Ray Train.

The arch is the `select` stage's choice, or ``retrain.arch`` (the space's text form, e.g. an
NB201 string or a DARTS genotype) to retrain any cell the same way (baselines, the table's best
cell). The network is built in the space of the run, with ``retrain.space_overrides`` applied
(e.g. more channels or cells than the supernet had: the usual final-network recipe).

Same machinery as the supernet stage (``run_training``: Ray Train workers, the same batch split
on every rank, checkpoints in `<run>/retrain/epoch_NNNN/`, resume, more `retrain.epochs`
continue), with a fixed arch: the arch's standalone network (``space.export_spec``, freshly
initialised) is what the workers train, so no supernet weight, gradient or all-reduce is
carried along; the export stage rebuilds it from the checkpoint. The recipe defaults to
NAS-Bench-201's (SGD, Nesterov, lr 0.1 cosine, weight decay 5e-4).

The result provides ``front`` (the one retrained arch, its row and the space it lives in) to
the export stage, which measures its test top-1 once.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.stage import StageContext, StageSpec
from orchestrator.stages.supernet import TrainingPlan, run_training
from search_spaces import build_space

STAGE = "retrain"
PROBE = "val_top1_selected"  # the loop's val metric of the fixed arch


def retrain_space(config: RaynasConfig) -> dict[str, Any]:
    """``build_space`` arguments of the retrained network: the run's space plus overrides."""
    spec = config.space_spec
    return {**spec, "overrides": {**spec["overrides"], **config.retrain.space_overrides}}


def chosen_arch(ctx: StageContext, space: Any) -> tuple[Any, str]:
    """The arch to retrain and where it came from (``retrain.arch`` or the selection)."""
    given = ctx.config.retrain.arch
    if given is not None:
        try:
            return space.parse(given), "retrain.arch"
        except ValueError as exc:
            raise UserInputError(f"retrain.arch={given!r}: {exc}") from None
    selection = ctx.input("selection")
    return space.from_json(json.dumps(selection["arch"])), "select"


def run(ctx: StageContext) -> dict[str, Any]:
    config = ctx.config
    spec = retrain_space(config)
    try:
        space = build_space(**spec)
    except ValueError as exc:
        raise UserInputError(f"retrain.space_overrides: {exc}") from None
    arch, source = chosen_arch(ctx, space)
    arch_json = space.to_json(arch)
    retrain = config.retrain
    dumped = config.model_dump(mode="json")
    plan = TrainingPlan(
        stage=STAGE,
        train=retrain,
        resources=retrain.resources,
        max_failures=retrain.max_failures,
        keep_checkpoints=retrain.keep_checkpoints,
        params={
            "retrain": dumped["retrain"],
            "arch": space.describe(arch),
            "arch_source": source,
            "space": spec,
        },
        space=spec,
        arch=arch_json,
    )
    print(f"[retrain] {space.describe(arch)} (from {source})", flush=True)
    result = run_training(ctx, plan)
    cost = space.cost(arch)
    aid = space.arch_id(arch)
    val = result["history"][-1].get(PROBE)
    row = {
        "arch_id": aid,
        "arch": arch_json,
        "params": int(cost["params"]),
        "flops": int(cost["flops"]),
        "val_top1": float(val) if val is not None else float("nan"),
        "trial": 0,
    }
    return {
        **result,
        "arch": json.loads(arch_json),
        "arch_id": aid,
        "text": space.describe(arch),
        "source": source,
        "space": spec,
        "front": [aid],
        "rows": [row],
    }


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "retrain"),
    ignores=(
        "retrain.resources",
        "retrain.max_failures",
        "retrain.inject_failure",
        "retrain.keep_checkpoints",
        "retrain.eval_batch_size",
        "retrain.record_archs",
    ),
    extends=("retrain.epochs",),
    optional=("selection",),  # unless retrain.arch names the arch
    provides={"front": ("front", "rows", "checkpoint", "checkpoint_sha256", "standalone", "space")},
    describe="train the selected arch from scratch on Ray Train",
)
