"""The `supernet` stage: data-parallel one-shot training on Ray Train.

Outputs in the run directory: `supernet/epoch_NNNN/` checkpoints (Ray Train storage) and
`supernet/result.json` (history, latest checkpoint), written only once training completed.
Restarting the stage resumes from the latest checkpoint; a completed stage is skipped unless the
config asks for more epochs.

The machinery (`run_training_stage` with a `TrainingPlan`) is shared with TAS-LoRA's `mole`
stage, which trains experts and router on top of the trained supernet the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from orchestrator.config.schema import Resources
from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic
from orchestrator.runtime import check_fits, ensure_ray, worker_resources
from orchestrator.tracking import Tracker, flatten, tracking_uri
from search_spaces import build_space
from trainables.data import load_splits
from trainables.supernets import base_of, build_supernet
from trainables.train import checkpoint as ckpt
from trainables.train.config import SupernetTrainConfig
from trainables.train.loop import WorkerSpec, check_data_fits_space, train_worker

STAGE = "supernet"
RESULT = "result.json"


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
    init_from: str | None = None  # checkpoint whose weights start the (base) supernet
    mole: dict[str, Any] | None = None  # MoLE spec (TAS-LoRA); None: the plain supernet
    group_init_steps: int = 0
    freeze_base: bool = True
    params: dict[str, Any] = field(default_factory=dict)  # logged to the stage's MLflow run


def supernet_plan(config: RaynasConfig) -> TrainingPlan:
    dumped = config.model_dump(mode="json")
    return TrainingPlan(
        stage=STAGE,
        train=config.supernet,
        resources=config.supernet.resources,
        max_failures=config.supernet.max_failures,
        params={k: dumped[k] for k in ("seed", "data", "space", "supernet")},
    )


def stage_dir(run_dir: str, stage: str = STAGE) -> Path:
    return Path(run_dir).resolve() / stage


def read_result(run_dir: str, stage: str = STAGE) -> dict[str, Any] | None:
    path = stage_dir(run_dir, stage) / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def latest_checkpoint(run_dir: str, stage: str = STAGE) -> Path | None:
    folders = sorted(stage_dir(run_dir, stage).glob("epoch_[0-9][0-9][0-9][0-9]"))
    return folders[-1] if folders else None


def preflight(config: RaynasConfig, plan: TrainingPlan) -> None:
    """Everything that can be checked on the driver, before any worker starts."""
    space = build_space(**config.space_spec)
    splits = load_splits(config.data, ("train", "val"), purpose=f"{plan.stage}-preflight")
    check_data_fits_space(splits, space)
    batch, workers = plan.train.batch_size, plan.resources.workers
    if batch // workers < 1 or len(splits.train) < batch:
        raise UserInputError(
            f"supernet.batch_size={batch} needs >= 1 image per worker "
            f"({workers} workers of {plan.stage}) and at most the {len(splits.train)} train images"
        )
    latest = latest_checkpoint(config.run_path, plan.stage)
    if latest is not None:
        ckpt.load_into(build_supernet(space, plan.mole), latest)
        ckpt.load_train_state(latest)
        ckpt.load_meta(latest)
    elif plan.init_from is not None:
        ckpt.load_into(base_of(build_supernet(space, plan.mole)), plan.init_from)


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


def run_supernet_stage(config: RaynasConfig, tracker: Tracker | None = None) -> dict[str, Any]:
    """Train (or finish training) the supernet of `config`; returns the stage result."""
    return run_training_stage(config, supernet_plan(config), tracker)


def run_training_stage(
    config: RaynasConfig, plan: TrainingPlan, tracker: Tracker | None = None
) -> dict[str, Any]:
    """Run (or finish) the training stage `plan` on Ray Train; returns the stage result."""
    run_dir, stage = config.run_path, plan.stage
    done = read_result(run_dir, stage)
    if done is not None and done["epochs"] >= plan.train.epochs:
        print(
            f"[{stage}] already trained for {done['epochs']} epochs in {stage_dir(run_dir, stage)}; "
            "skipping",
            flush=True,
        )
        return done
    preflight(config, plan)
    owns_tracker = tracker is None  # then this stage is the whole run and closes the parent run too
    tracker = tracker or Tracker(
        tracking_uri(config.tracking.uri, run_dir), config.tracking.experiment, run_dir, config.name
    )
    run_id = tracker.stage_run(stage)
    tracker.log_params(tracker.parent_run_id, flatten(config.model_dump(mode="json")))
    tracker.log_params(run_id, flatten(plan.params))
    logged = backfill_history(tracker, run_id, latest_checkpoint(run_dir, stage))
    local = ensure_ray(config.ray)
    resources = plan.resources
    check_fits(resources, stage, local)

    spec = WorkerSpec(
        train=plan.train,
        data=config.data,
        space=config.space_spec,
        seed=config.seed,
        run_dir=str(Path(run_dir).resolve()),
        stage=stage,
        init_from=plan.init_from,
        mole=plan.mole,
        group_init_steps=plan.group_init_steps,
        freeze_base=plan.freeze_base,
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=worker_resources(resources),
            accelerator_type=resources.accelerator_type,
        ),
        run_config=RunConfig(
            name=stage,
            storage_path=str(Path(run_dir).resolve()),
            failure_config=FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=[EpochLogger(tracker.uri, run_id, logged)],
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        tracker.finish(run_id, ok=False)
        if owns_tracker:
            tracker.finish(tracker.parent_run_id, ok=False)
        user_error = _user_error_in(exc)
        if user_error is not None:
            raise user_error from None
        raise
    latest = latest_checkpoint(run_dir, stage)
    meta = ckpt.load_meta(latest)
    outcome = {
        "epochs": meta["epoch"],
        "checkpoint": str(latest),
        "history": meta["history"],
        "metrics": result.metrics,
        "mlflow_run_id": run_id,
    }
    write_json_atomic(stage_dir(run_dir, stage) / RESULT, outcome)
    tracker.client.log_artifacts(run_id, str(latest), artifact_path="checkpoint")
    tracker.client.log_artifact(run_id, str(stage_dir(run_dir, stage) / RESULT))
    tracker.finish(run_id, ok=True)
    if owns_tracker:
        tracker.finish(tracker.parent_run_id, ok=True)
    return outcome


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
