"""The `supernet` stage: data-parallel one-shot training on Ray Train.

Outputs in the run directory: `supernet/epoch_NNNN/` checkpoints (Ray Train storage; the newest
`supernet.keep_checkpoints` are kept) and `supernet/result.json` (history, the checkpoint Ray
Train registered last), written by the engine once training completed. Restarting the stage
resumes from the checkpoint Ray Train registered; more `supernet.epochs` continue training.

The machinery (`run_training` with a `TrainingPlan`) is shared with TAS-LoRA's `mole` stage,
which trains experts and router on top of the trained supernet the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from orchestrator import mirror
from orchestrator.config.schema import Resources
from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.runtime import check_placement, ensure_ray, place
from orchestrator.stage import StageContext, StageSpec
from orchestrator.tracking import Tracker, flatten
from search_spaces import build_space
from trainables.data.splits import open_splits
from trainables.data.stream import describe
from trainables.supernets import base_of, build_supernet, dense_state
from trainables.train import checkpoint as ckpt
from trainables.train.config import SupernetTrainConfig
from trainables.train.loop import WorkerSpec, check_data_fits_space, train_worker, trainer_data

STAGE = "supernet"
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints


class EpochLogger(ray.train.UserCallback):
    """Logs rank 0's reported metrics to the stage's MLflow run, each epoch once.

    Runs in the Ray Train controller, which Ray places on the driver's node, so the embedded
    SQLite store in the run directory is reachable from it.
    """

    def __init__(self, uri: str, run_id: str, logged_epochs: set[int]) -> None:
        self.uri = uri
        self.run_id = run_id
        self.logged = set(logged_epochs)
        self._client = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        from mlflow.tracking import MlflowClient

        if not metrics or "epoch" not in metrics[0]:
            return
        rank0 = metrics[0]
        epoch = int(rank0["epoch"])
        if epoch in self.logged:
            return
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        self._client.log_batch(self.run_id, metrics=epoch_metrics(rank0))
        self.logged.add(epoch)


def epoch_metrics(metrics: dict[str, Any]) -> list:
    """One epoch's numeric metrics as MLflow `Metric`s with step = epoch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    epoch = int(metrics["epoch"])
    return [
        Metric(k, float(v), now, epoch)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and k != "epoch"
    ]


@dataclass(frozen=True)
class TrainingPlan:
    """What a training stage trains, how, and where its workers run."""

    stage: str
    train: SupernetTrainConfig
    resources: Resources
    max_failures: int
    keep_checkpoints: int = 2
    init_from: str | None = None  # checkpoint whose weights start the (base) supernet
    adapter: dict[str, Any] | None = None  # family adapter spec (TAS-LoRA: MoLE); None: plain
    group_init_steps: int = 0
    freeze_base: bool = True
    params: dict[str, Any] = field(default_factory=dict)  # logged to the stage's MLflow run
    space: dict[str, Any] | None = None  # build_space arguments; None: the config's space
    arch: str | None = None  # JSON of the one arch every step trains (retrain); None: sampled
    dense: str | None = None  # model folder: inherited by a fresh supernet, the distill teacher

    def space_spec(self, config: RaynasConfig) -> dict[str, Any]:
        return self.space if self.space is not None else config.space_spec


def supernet_plan(config: RaynasConfig, ctx: StageContext | None = None) -> TrainingPlan:
    """The supernet stage's plan; with ``ctx``, in the space an earlier stage provided and
    starting from (and distilled from) the dense model one provided."""
    dumped = config.model_dump(mode="json")
    dense = ctx.inputs.get("dense") if ctx is not None else None
    return TrainingPlan(
        space=ctx.space_spec if ctx is not None else None,
        dense=str(ctx.path(dense["dense"])) if dense else None,
        stage=STAGE,
        train=config.supernet,
        resources=config.supernet.resources,
        max_failures=config.supernet.max_failures,
        keep_checkpoints=config.supernet.keep_checkpoints,
        params={k: dumped[k] for k in ("seed", "data", "space", "supernet")},
    )


def stage_dir(run_dir: str, stage: str = STAGE) -> Path:
    return Path(run_dir).resolve() / stage


def registered_checkpoint(run_dir: str, stage: str = STAGE) -> Path | None:
    """The checkpoint Ray Train registered last (what a restarted trainer resumes from), read
    from Ray Train's snapshot; None before the first one. A folder that a dying driver left
    without registering it is never used."""
    path = stage_dir(run_dir, stage) / SNAPSHOT
    if not path.exists():
        return None
    try:
        latest = json.loads(path.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ckpt.CheckpointError(
            f"{path}: Ray Train's checkpoint record is damaged: {exc}"
        ) from None
    name = latest.get("checkpoint_dir_name")
    return stage_dir(run_dir, stage) / name if name else None


def storage_of(run_dir: str) -> dict[str, Any]:
    """Ray Train's `storage_path` (and `storage_filesystem`): the run directory, or the store of
    an object-store one, which every node's rank 0 writes its checkpoints into directly."""
    store = mirror.current()
    if store is None:
        return {"storage_path": run_dir}
    path, filesystem = store.storage_path()
    return {"storage_path": path, "storage_filesystem": filesystem}


def downloaded(checkpoint_path: str, stage: str) -> Path:
    """The local folder of a checkpoint Ray Train registered: in place, or (object-store run
    directory) the stage folder copied into the workspace first."""
    store = mirror.current()
    if store is None:
        return Path(checkpoint_path)
    store.pull(stage)
    return store.local_path(checkpoint_path)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a checkpoint's weights: which supernet scored an archive row."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def preflight(config: RaynasConfig, plan: TrainingPlan):
    """Everything that can be checked on the driver, before any worker starts; returns the
    train and val splits (for the MLflow dataset record): in memory, or, where data.loader
    resolves to stream, a plan from the parquet metadata and a bounded sample."""
    space = build_space(**plan.space_spec(config))
    # an arch of another space fails here, before any worker starts
    arch = space.from_json(plan.arch) if plan.arch is not None else None
    # mixed (selector) training reads TRAIN only; so does its pre-flight
    wanted = ("train",) if plan.train.sampling == "mixed" else ("train", "val")
    splits = open_splits(config.data, wanted, purpose=f"{plan.stage}-preflight")
    check_data_fits_space(splits, space)
    if plan.train.sampling == "mixed" and not build_supernet(space).selector_parameters():
        raise UserInputError(
            f"{plan.stage}.sampling=mixed needs a supernet with an operation selector; the "
            f"{space.family} family has none (allowed for it: uniform, sandwich)"
        )
    batch, workers = plan.train.batch_size, plan.resources.workers
    if batch // workers < 1 or len(splits.train) < batch:
        raise UserInputError(
            f"supernet.batch_size={batch} needs >= 1 image per worker "
            f"({workers} workers of {plan.stage}) and at most the {len(splits.train)} train images"
        )
    latest = registered_checkpoint(str(config.workspace), plan.stage)
    if latest is not None:
        ckpt.load_into(build_supernet(space, plan.adapter, arch), latest)
        ckpt.load_train_state(latest)
        ckpt.load_meta(latest)
    elif plan.init_from is not None:
        ckpt.load_into(base_of(build_supernet(space, plan.adapter)), plan.init_from)
    elif plan.dense is not None:
        try:
            base_of(build_supernet(space, plan.adapter)).inherit(dense_state(plan.dense))
        except (OSError, ValueError) as exc:
            raise UserInputError(f"{plan.stage}: the dense model {plan.dense}: {exc}") from None
    if plan.train.distill.weight > 0 and plan.dense is None:
        raise UserInputError(
            f"{plan.stage}: distill.weight={plan.train.distill.weight} needs a dense teacher, "
            "which no stage of this run provides (FLORA's pretrain stage does); allowed: "
            "supernet.distill.weight 0 without one"
        )
    return splits


def backfill_history(tracker: Tracker, run_id: str, latest: Path | None) -> set[int]:
    """Log epochs the latest checkpoint holds but MLflow lacks (the driver died between the
    checkpoint and its logging); return the epochs now in MLflow."""
    logged = tracker.logged_steps(run_id, "train_loss")
    if latest is None:
        return logged
    for metrics in ckpt.load_meta(latest)["history"]:
        if int(metrics["epoch"]) not in logged:
            tracker.client.log_batch(run_id, metrics=epoch_metrics(metrics))
            logged.add(int(metrics["epoch"]))
    return logged


def run_training(ctx: StageContext, plan: TrainingPlan) -> dict[str, Any]:
    """Run (or finish) the training stage `plan` on Ray Train; returns the stage result."""
    config, run_dir, stage = ctx.config, str(ctx.run_dir), plan.stage
    splits = preflight(config, plan)
    tracker: Tracker = ctx.tracker
    run_id = ctx.run_id
    tracker.log_dataset(run_id, splits, config.data, context="train")
    tracker.log_params(run_id, flatten(plan.params))
    tracker.log_params(run_id, flatten({"data_read": describe(splits)}))
    logged = backfill_history(tracker, run_id, registered_checkpoint(run_dir, stage))
    resources = plan.resources
    placement = place(config, stage, resources, training=True)
    local = ensure_ray(config.ray)
    check_placement(config, placement, resources.workers, local)
    stream, ingest = trainer_data(
        splits, plan.train, config.seed, resources.workers * resources.cpus_per_worker
    )

    spec = WorkerSpec(
        train=plan.train,
        data=config.data,
        space=plan.space_spec(config),
        seed=config.seed,
        run_dir=run_dir,
        stage=stage,
        init_from=mirror.for_workers(plan.init_from),
        adapter=plan.adapter,
        group_init_steps=plan.group_init_steps,
        freeze_base=plan.freeze_base,
        arch=plan.arch,
        dense=mirror.for_workers(plan.dense),
        stream=stream,
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=resources.workers, **placement.train_kwargs()),
        run_config=RunConfig(
            name=stage,
            **storage_of(run_dir),
            failure_config=FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=plan.keep_checkpoints),
            callbacks=[EpochLogger(tracker.uri, run_id, logged)],
        ),
        **ingest,
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        user_error = _user_error_in(exc)
        if user_error is not None:
            raise user_error from None
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}: Ray Train finished without registering a checkpoint")
    checkpoint = downloaded(result.checkpoint.path, stage)
    meta = ckpt.load_meta(checkpoint)
    tracker.client.log_artifacts(run_id, str(checkpoint), artifact_path="checkpoint")
    return {
        "epochs": meta["epoch"],
        "checkpoint": ctx.rel(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint / ckpt.WEIGHTS),
        "adapter": plan.adapter,
        "standalone": plan.arch is not None,  # the weights of one arch's network, not a supernet
        "history": meta["history"],
        "space": plan.space_spec(config),
        "data": describe(splits),  # loader, normalisation and the sample it came from
        "placement": {"where": placement.where(), "ranks": meta.get("placement", [])},
        "metrics": result.metrics,
        "mlflow_run_id": run_id,
    }


def run(ctx: StageContext) -> dict[str, Any]:
    return run_training(ctx, supernet_plan(ctx.config, ctx))


#: Training outputs a later stage scores with: the checkpoint and how to build its model.
TRAINED_MODEL = ("checkpoint", "checkpoint_sha256", "adapter")
#: `supernet` recipe keys that do not change the trained weights (placement, retries, disk use,
#: how the per-epoch probes are batched); every training stage ignores them.
RECIPE_IGNORES = (
    "supernet.resources",
    "supernet.max_failures",
    "supernet.inject_failure",
    "supernet.keep_checkpoints",
    "supernet.eval_batch_size",
    "supernet.record_archs",
)

#: `supernet` recipe keys of how the weights are optimised, read by stages that train with the
#: supernet's recipe but their own length (FLORA's pretrain and filter)
OPTIMISER_RECIPE = tuple(
    f"supernet.{k}"
    for k in (
        "batch_size",
        "lr",
        "min_lr",
        "weight_decay",
        "label_smoothing",
        "clip_grad",
        "optimizer",
        "momentum",
        "nesterov",
        "precision",
    )
)

SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "supernet"),
    ignores=RECIPE_IGNORES,
    extends=("supernet.epochs",),
    optional=("space", "dense"),  # FLORA: the filtered space, the dense model to start from
    provides={"supernet": TRAINED_MODEL},
    describe="train the weight-sharing supernet on Ray Train",
)


def _user_error_in(exc: BaseException) -> UserInputError | None:
    """A UserInputError raised inside a worker, unwrapped from Ray's error."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen or current is None:
            continue
        seen.add(id(current))
        if isinstance(current, UserInputError):
            return current
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
        stack.extend([current.__cause__, current.__context__])
    return None
