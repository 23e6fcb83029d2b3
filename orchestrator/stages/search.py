"""The `search` stage: score subnets of the trained supernet in parallel with Ray Tune + Optuna.

Inputs: the supernet checkpoint (from `<run>/supernet/result.json`, or a path given on the
command line). Outputs: the Optuna study (`<run>/study.db` unless `search.storage` names one),
`<run>/archive.parquet`, `<run>/pareto.parquet`, `<run>/pareto.png`, `<run>/search/result.json`
(written last: its presence means the stage completed) and a nested MLflow run.

Rerunning continues: the study and the archive are reloaded, trials that were running when the
previous driver died are closed, and only the rest of the budget is evaluated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic
from orchestrator.runtime import check_fits, ensure_ray, trial_resources
from orchestrator.search.archive import ARCHIVE_FILE, Archive
from orchestrator.search.pareto import (
    PLOT_FILE,
    hypervolume_2d,
    pareto_front,
    plot_front,
    write_front,
)
from orchestrator.search.samplers import constraint_of, make_sampler
from orchestrator.search.searcher import ArchSearch, metric_names
from orchestrator.stages import mole as mole_stage
from orchestrator.stages import supernet as supernet_stage
from orchestrator.tracking import Tracker, flatten, tracking_uri
from search_spaces import build_space
from trainables.evaluator import EvalSpec, evaluate_candidate
from trainables.supernets import load_supernet
from trainables.train import checkpoint as ckpt

STAGE = "search"
RESULT = "result.json"
STUDY_FILE = "study.db"


class StudyStorageError(UserInputError):
    """The Optuna storage cannot be opened or does not fit the config."""


def stage_dir(run_dir: str) -> Path:
    return Path(run_dir).resolve() / STAGE


def read_result(run_dir: str) -> dict[str, Any] | None:
    path = stage_dir(run_dir) / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def storage_url(config: RaynasConfig) -> str:
    if config.search.storage:
        return config.search.storage
    return f"sqlite:///{Path(config.run_path).resolve() / STUDY_FILE}"


def study_name(config: RaynasConfig) -> str:
    return config.search.study_name or config.name


def resolve_checkpoint(config: RaynasConfig, supernet: str | Path | None = None) -> Path:
    """The checkpoint the search scores with: `supernet` (a checkpoint folder, a `supernet.pt`
    file or a run directory) or else the run directory's trained supernet (for TAS-LoRA the
    `mole` stage's experts and router on top of it)."""
    stage = mole_stage.STAGE if mole_stage.mole_spec(config) else supernet_stage.STAGE
    if supernet is not None:
        path = Path(supernet).resolve()
        if path.is_file():
            path = path.parent
        if (path / ckpt.WEIGHTS).exists():
            return path
        done = supernet_stage.read_result(str(path), stage)
        if done is not None:
            return Path(done["checkpoint"])
        raise ckpt.CheckpointError(
            f"--supernet {supernet}: neither a checkpoint folder (with {ckpt.WEIGHTS}) nor a run "
            f"directory with a trained {stage} stage ({stage}/result.json)"
        )
    done = supernet_stage.read_result(config.run_path, stage)
    if done is None:
        raise ckpt.CheckpointError(
            f"no trained {'supernet' if stage == 'supernet' else 'MoLE supernet'} in "
            f"{supernet_stage.stage_dir(config.run_path, stage)}; run the {stage} stage first "
            "(`raynas run CONFIG`) or pass --supernet PATH"
        )
    return Path(done["checkpoint"])


def open_study(config: RaynasConfig, sampler: Any = None):
    """The run's Optuna storage (its SQLite folder created); one line when it is unusable."""
    import optuna

    url = storage_url(config)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy/driver errors: unreachable server, missing driver, ...
        raise StudyStorageError(
            f"search.storage={url!r}: cannot open the Optuna storage ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); allowed: any SQLAlchemy URL Optuna "
            "supports, e.g. sqlite:///study.db or postgresql://user:pass@host/db"
        ) from None
    return storage


def reconcile(study: Any, archive: Archive, metrics: list[str]) -> int:
    """Close trials a dead driver left RUNNING: evaluated ones (in the archive) are told their
    archived values, the others are marked FAIL. Returns how many were closed."""
    from optuna.trial import TrialState

    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        aid = trial.user_attrs.get("arch_id")
        if trial.state == TrialState.WAITING:
            continue  # enqueued, not started: the sampler will hand it out again
        if aid is not None and aid in archive:
            study.tell(trial.number, [archive.get(aid)[m] for m in metrics])
        else:
            study.tell(trial.number, state=TrialState.FAIL)
        closed += 1
    return closed


def check_study(study: Any, metrics: list[str], name: str, url: str) -> None:
    """An existing study must optimise what the config asks for."""
    existing = study.metric_names
    if existing is not None and list(existing) != metrics:
        raise StudyStorageError(
            f"study {name!r} in {url} optimises {existing}, but the config asks for {metrics}; "
            "set search.study_name to start a new study, or restore search.objectives"
        )


def enqueue_extremes(study: Any, space: Any, constraint: Any) -> None:
    for arch in (space.largest(), space.smallest()):
        if constraint is None or constraint(arch) is None:
            study.enqueue_trial(space.encode(arch), skip_if_exists=True)


class Progress:
    """One line per evaluated candidate, and the candidate's metrics into MLflow."""

    def __init__(self, budget: int, done: int, tracker: Tracker, run_id: str) -> None:
        self.budget = budget
        self.count = done
        self.best = None
        self.tracker = tracker
        self.run_id = run_id

    def __call__(self, row: dict[str, Any]) -> None:
        self.count += 1
        self.best = max(self.best or 0.0, row["val_top1"])
        print(
            f"[search] {self.count}/{self.budget}  trial {row['trial']:>3}  "
            f"val {row['val_top1']:5.2f}%  {row['flops'] / 1e6:7.2f} MFLOPs  "
            f"{row['params'] / 1e6:5.2f}M params  ({row.get('eval_seconds') or 0:.1f} s)  "
            f"best {self.best:.2f}%",
            flush=True,
        )
        values = {
            "val_top1": row["val_top1"],
            "params": row["params"],
            "flops": row["flops"],
            "best_val_top1": self.best,
            "latency_ms": row.get("latency_ms"),
        }
        self.tracker.log_metrics(self.run_id, values, step=self.count)


def run_search_stage(
    config: RaynasConfig,
    tracker: Tracker | None = None,
    supernet: str | Path | None = None,
) -> dict[str, Any]:
    """Search subnets of the trained supernet; returns the stage result."""
    import optuna

    run_dir = config.run_path
    search = config.search
    done = read_result(run_dir)
    if done is not None and (done["evaluated"] >= search.budget or done.get("exhausted")):
        print(f"[search] already evaluated {done['evaluated']} candidates; skipping", flush=True)
        return done

    space = build_space(**config.space_spec)
    checkpoint = resolve_checkpoint(config, supernet)
    load_supernet(space, checkpoint, mole_stage.mole_spec(config))  # corrupt/mismatched: fail now
    metrics = metric_names(search.objectives)
    constraint = constraint_of(search, space)
    archive = Archive.load(Path(run_dir).resolve() / ARCHIVE_FILE)

    storage = open_study(config)
    name = study_name(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
        check_study(existing, metrics, name, storage_url(config))
        trials_so_far = len(existing.trials)
    except KeyError:
        trials_so_far = 0
    sampler = make_sampler(search, space, config.seed, trials_so_far, constraint)

    owns_tracker = tracker is None
    tracker = tracker or Tracker(
        tracking_uri(config.tracking.uri, run_dir), config.tracking.experiment, run_dir, config.name
    )
    run_id = tracker.stage_run(STAGE)
    if owns_tracker:
        tracker.log_params(tracker.parent_run_id, flatten(config.model_dump(mode="json")))
    tracker.log_params(
        run_id,
        flatten(
            {"search": config.model_dump(mode="json")["search"], "checkpoint": str(checkpoint)}
        ),
    )
    progress = Progress(search.budget, len(archive), tracker, run_id)
    searcher = ArchSearch(
        space,
        objectives=search.objectives,
        sampler=sampler,
        storage=storage,
        study_name=name,
        archive=archive,
        constraint=constraint,
        on_evaluated=progress,
    )
    study = searcher.study
    closed = reconcile(study, archive, metrics)
    if closed:
        print(f"[search] closed {closed} trials left running by an interrupted run", flush=True)
    if trials_so_far == 0 and search.seed_extremes:
        enqueue_extremes(study, space, constraint)

    remaining = search.budget - len(archive)
    started = time.time()
    failed = 0
    if remaining > 0:
        print(
            f"[search] {search.strategy}: {remaining} of {search.budget} candidates to evaluate "
            f"with {search.resources.workers} workers; study {name!r} in {storage_url(config)}",
            flush=True,
        )
        failed = _tune(config, space, checkpoint, searcher, remaining)
    ok = len(archive) >= search.budget or searcher.exhausted
    outcome = _finish(config, archive, searcher, checkpoint, time.time() - started, failed)
    if not ok:
        tracker.finish(run_id, ok=False)
        if owns_tracker:
            tracker.finish(tracker.parent_run_id, ok=False)
        raise UserInputError(
            f"search evaluated {len(archive)} of {search.budget} candidates ({failed} trials failed; "
            f"see {stage_dir(run_dir) / 'tune'}); rerun to continue with the rest"
        )
    write_json_atomic(stage_dir(run_dir) / RESULT, outcome)
    tracker.log_metrics(
        run_id,
        {
            k: outcome[k]
            for k in ("evaluated", "rejected", "duplicates", "failed", "hypervolume", "front_size")
        },
    )
    root = Path(run_dir).resolve()
    for name_ in (ARCHIVE_FILE, "pareto.parquet", PLOT_FILE):
        tracker.client.log_artifact(run_id, str(root / name_))
    tracker.client.log_artifact(run_id, str(stage_dir(run_dir) / RESULT))
    tracker.finish(run_id, ok=True)
    if owns_tracker:
        tracker.finish(tracker.parent_run_id, ok=True)
    return outcome


def _tune(config: RaynasConfig, space: Any, checkpoint: Path, searcher: ArchSearch, n: int) -> int:
    """Run `n` evaluation trials through Ray Tune; returns how many trials errored."""
    from ray import tune

    search = config.search
    local = ensure_ray(config.ray)
    check_fits(search.resources, STAGE, local)
    measure = search.measure_latency or "latency" in search.objectives
    spec = EvalSpec(
        checkpoint=str(checkpoint),
        data=config.data,
        space=config.space_spec,
        batch_size=search.eval_batch_size,
        precision=config.supernet.precision,
        latency_batch_size=search.latency_batch_size if measure else None,
        mole=mole_stage.mole_spec(config),
    )
    trainable = tune.with_resources(
        tune.with_parameters(evaluate_candidate, spec=spec), trial_resources(search.resources)
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=n,
            max_concurrent_trials=search.resources.workers,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(stage_dir(config.run_path)),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=search.max_trial_failures),
        ),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        print(f"[search] {len(errors)} trials failed; first: {errors[0]!r}"[:2000], flush=True)
    return len(errors)


def _finish(
    config: RaynasConfig,
    archive: Archive,
    searcher: ArchSearch,
    checkpoint: Path,
    seconds: float,
    failed: int,
) -> dict[str, Any]:
    """Pareto front, plot and the stage result (not yet written)."""
    run_dir = Path(config.run_path).resolve()
    rows = archive.rows
    front = pareto_front(rows, config.search.objectives)
    write_front(front, run_dir)
    plot_front(
        rows,
        front,
        run_dir / PLOT_FILE,
        title=f"{config.name}: {config.search.strategy}, {len(rows)} candidates",
    )
    return {
        "evaluated": len(archive),
        "budget": config.search.budget,
        "exhausted": searcher.exhausted,
        "rejected": searcher.rejected,
        "duplicates": searcher.duplicates,
        "failed": failed,
        "seconds": seconds,
        "strategy": config.search.strategy,
        "objectives": list(config.search.objectives),
        "study": study_name(config),
        "storage": storage_url(config),
        "checkpoint": str(checkpoint),
        "front": [r["arch_id"] for r in front],
        "front_size": len(front),
        "hypervolume": hypervolume_2d(rows),
    }
