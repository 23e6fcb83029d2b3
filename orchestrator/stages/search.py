"""The `search` stage: score subnets of the trained supernet in parallel with Ray Tune + Optuna.

Inputs: the ``supernet`` output of an earlier stage (its checkpoint, the weights' digest and the
adapter that builds the model), or a checkpoint given on the command line. Outputs: the Optuna
study (`<run>/study.db` unless `search.storage` names one), `<run>/archive.parquet` (each row
records the checkpoint digest that scored it), `<run>/pareto.parquet`, `<run>/pareto.png`,
`<run>/search/result.json` and a nested MLflow run.

Candidates are evaluated by Ray Tune trials, or, for table lookups (``search.runner``: auto
with ``search.evaluator: table``, or inprocess), by a loop in this process
(``orchestrator.search.inprocess``): both drive the one searcher :func:`build_searcher` makes,
so they give the same study and archive.

Rerunning continues: the study and the archive are reloaded, trials that were running when the
previous driver died are closed, and only the rest of the budget is evaluated. A search whose
checkpoint, val split or space changed starts afresh (the engine moves the old archive aside)
in a new study named after its fingerprint: a study is never continued over other inputs.

With `search.storage` set, the study may be shared: several drivers (other machines, each
with its own run directory and archive; same config, storage and study name) then evaluate
`search.budget` candidates *together*, each arch once (the rule is in
``orchestrator.search.searcher``); each archive holds what its own driver evaluated, and each
driver's sampler seed also mixes in its host and run directory, so they propose different
candidates. A driver closes only the RUNNING trials it can prove abandoned (see
:func:`reconcile`). The storage survives a database restart of up to a minute
(``orchestrator.search.storage``).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from orchestrator import mirror
from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.runtime import check_placement, ensure_ray, place
from orchestrator.search.archive import ARCHIVE_FILE, Archive
from orchestrator.search.inprocess import CandidateError, run_inprocess
from orchestrator.search.latency import LatencyPlan, predicted_ms, start_latency
from orchestrator.search.pareto import (
    PLOT_FILE,
    hypervolume,
    pareto_front,
    plot_front,
    space_reference,
    write_front,
)
from orchestrator.search.searcher import (
    DRIVER_ATTR,
    ArchSearch,
    build_searcher,
    driver_identity,
    driver_label,
    driver_status,
    is_claim,
    metric_names,
)
from orchestrator.search.storage import RetryingRDBStorage, StudyStorageError
from orchestrator.secrets import redact, resolve
from orchestrator.stage import StageContext, StageSpec
from orchestrator.tracking import Tracker, flatten
from search_spaces import build_space
from trainables.evaluator import EvalSpec, build_evaluator, candidate_metrics, evaluate_candidate
from trainables.supernets import load_supernet
from trainables.train import checkpoint as ckpt

STAGE = "search"
STUDY_FILE = "study.db"
FINGERPRINT_ATTR = "raynas.fingerprint"


def storage_url(config: RaynasConfig) -> str:
    """The study storage URL as configured (``${NAME}`` unexpanded): safe to print once
    redacted; :func:`open_study` expands it."""
    if config.search.storage:
        return config.search.storage
    return f"sqlite:///{config.workspace / STUDY_FILE}"


def study_name(config: RaynasConfig) -> str:
    return config.search.study_name or config.name


def external_checkpoint(supernet: str | Path) -> dict[str, Any]:
    """The ``supernet`` input from a path on the command line: a checkpoint folder, its
    `supernet.pt`, or a run directory whose stages trained one."""
    from orchestrator.stages.supernet import file_sha256

    path = Path(supernet).resolve()
    if path.is_file():
        path = path.parent
    if (path / ckpt.WEIGHTS).exists():
        meta = ckpt.load_meta(path) if (path / ckpt.META).exists() else {}
        return {
            "checkpoint": str(path),
            "checkpoint_sha256": file_sha256(path / ckpt.WEIGHTS),
            "adapter": meta.get("adapter"),
        }
    from orchestrator.stages import latest_output

    done = latest_output(path, "supernet")
    if done is not None:
        return {**done, "checkpoint": str(path / done["checkpoint"])}
    raise ckpt.CheckpointError(
        f"--supernet {supernet}: neither a checkpoint folder (with {ckpt.WEIGHTS}) nor a run "
        "directory with a trained supernet (supernet/result.json)"
    )


def open_study(config: RaynasConfig, sampler: Any = None):
    """The run's Optuna storage (its SQLite folder created); one line when it is unusable.
    Once open, it waits out a database outage of up to a minute per call."""
    if config.remote and config.search.storage is None:
        raise StudyStorageError(
            f"run_dir={config.run_path!r} is in an object store, which cannot hold the search's "
            "SQLite study; set search.storage to a database server, e.g. "
            "postgresql+psycopg2://user:${PGPASSWORD}@host/db"
        )
    url = resolve(storage_url(config), "search.storage")
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = RetryingRDBStorage(url, shown_url=redact(storage_url(config)))
    except Exception as exc:  # SQLAlchemy/driver errors: unreachable server, missing driver, ...
        raise StudyStorageError(
            f"search.storage={redact(url)!r}: cannot open the Optuna storage ({type(exc).__name__}: "
            f"{redact(str(exc).splitlines()[0]) if str(exc) else ''}); allowed: any SQLAlchemy URL "
            "Optuna supports, e.g. sqlite:///study.db or postgresql://user:${PGPASSWORD}@host/db"
        ) from None
    return storage


def reconcile(
    study: Any, archive: Archive, metrics: list[str], driver: dict[str, Any] | None = None
) -> int:
    """Close trials a driver that is gone left RUNNING: evaluated ones (in that driver's
    archive) are told their archived values, the others are marked FAIL. Returns how many.

    Without `driver` (a study only this run directory uses: its own SQLite file), every
    RUNNING trial is such a leftover. With `driver` (a study other drivers may share), only
    the trials it can prove abandoned: those of an earlier driver of the same run directory
    on the same host (the run-dir lock says it is gone), and those of a driver on the same
    host whose process no longer exists (closed from its run directory's archive). Trials of
    drivers on other hosts, and trials that name no driver, may belong to a live driver and
    are left alone: rerun the search in that driver's own run directory to close them."""
    from optuna.trial import TrialState

    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        books: Archive | None = archive
        if driver is not None:
            owner = trial.user_attrs.get(DRIVER_ATTR)
            status = driver_status(owner, driver)
            if status == "dead":
                books = _archive_of(owner)
            elif status != "own":
                continue
        aid = trial.user_attrs.get("arch_id")
        if books is not None and aid is not None and aid in books:
            study.tell(trial.number, [books.get(aid)[m] for m in metrics])
        else:
            study.tell(trial.number, state=TrialState.FAIL)
        closed += 1
    return closed


def _archive_of(driver: dict[str, Any]) -> Archive | None:
    """The archive of another (dead) driver's run directory on this host, if readable."""
    try:
        return Archive.load(Path(driver["run_dir"]) / ARCHIVE_FILE)
    except (OSError, KeyError, TypeError, UserInputError):
        return None


def check_study(study: Any, metrics: list[str], name: str, url: str) -> None:
    """An existing study must optimise what the config asks for."""
    existing = study.metric_names
    if existing is not None and list(existing) != metrics:
        raise StudyStorageError(
            f"study {name!r} in {redact(url)} optimises {existing}, but the config asks for "
            f"{metrics}; set search.study_name to start a new study, or restore search.objectives"
        )


def _started(study: Any) -> bool:
    """Whether any trial of `study` went beyond being enqueued (WAITING)."""
    from optuna.trial import TrialState

    return any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def choose_study(storage: Any, base: str, fingerprint: str) -> tuple[str, Any | None]:
    """The study this search continues or creates: `base` when it is new or was started by a
    search with the same inputs (fingerprint), else ``<base>-<fingerprint>``, a new study.
    Returns (name, the existing study or None)."""
    import optuna

    for name in (base, f"{base}-{fingerprint[:8]}"):
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return name, None
        owner = study.user_attrs.get(FINGERPRINT_ATTR)
        if owner == fingerprint or (owner is None and not _started(study)):
            return name, study
    raise StudyStorageError(
        f"studies {base!r} and {base}-{fingerprint[:8]!r} hold searches of other inputs; set "
        "search.study_name to a new name"
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


def run(ctx: StageContext) -> dict[str, Any]:
    """Search subnets of the trained supernet; returns the stage result."""
    import optuna

    config, run_dir = ctx.config, ctx.run_dir
    search = config.search
    space_spec = ctx.space_spec
    space = build_space(**space_spec)
    if search.evaluator == "table":
        table = space.tabular_benchmark()
        if table is None:
            raise UserInputError(
                f"search.evaluator=table: search space {config.family}/{config.space.preset} has "
                "no tabular benchmark; allowed: supernet"
            )
        trained = {"checkpoint": None, "checkpoint_sha256": None, "adapter": None}
        checkpoint, adapter, scored_by = None, None, f"table:{table.name}:{table.metric}"
    else:
        if "supernet" not in ctx.inputs:
            raise UserInputError(
                f"stage search needs the supernet of the supernet stage, which has not completed "
                f"in {run_dir}; run it first (`raynas run CONFIG`) or pass --supernet PATH (or "
                "set search.evaluator=table where the space has a table)"
            )
        trained = ctx.input("supernet")
        checkpoint = ctx.path(trained["checkpoint"])
        adapter = trained.get("adapter")
        load_supernet(space, checkpoint, adapter)  # corrupt/mismatched: fail now
        scored_by = trained.get("checkpoint_sha256")
    metrics = metric_names(search.objectives)
    archive = Archive.load(run_dir / ARCHIVE_FILE, stamp={"scored_by": scored_by})

    storage = open_study(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, existing = choose_study(storage, study_name(config), ctx.fingerprint)
    if existing is not None:
        check_study(existing, metrics, name, storage_url(config))
    trials_so_far = len(existing.trials) if existing is not None else 0
    # a study in search.storage may be shared by drivers with this very config: each one's
    # sampler gets its own seed stream (the evolution sampler seeds by trial number anyway)
    shared = search.storage is not None
    # an object-store run directory is named by its URI: its lease says an earlier driver of it
    # is gone, on whichever host it ran
    driver = driver_identity(config.run_path if config.remote else run_dir)
    runner = search.resolved_runner

    tracker: Tracker = ctx.tracker
    tracker.log_params(
        ctx.run_id,
        flatten(
            {
                "search": config.model_dump(mode="json")["search"],
                "evaluator": search.evaluator,
                "runner": runner,
                "checkpoint": trained["checkpoint"],
                "checkpoint_sha256": trained.get("checkpoint_sha256"),
                "study": name,
            }
        ),
    )
    progress = Progress(search.budget, len(archive), tracker, ctx.run_id)
    searcher = build_searcher(
        search,
        space,
        config.seed,
        storage=storage,
        study_name=name,
        archive=archive,
        trials_so_far=trials_so_far,
        shared=shared,  # shared: the budget is counted over the whole study
        driver=driver,
        on_evaluated=progress,
    )
    study = searcher.study
    study.set_user_attr(FINGERPRINT_ATTR, ctx.fingerprint)
    study.set_user_attr("raynas.checkpoint_sha256", trained.get("checkpoint_sha256"))
    closed = reconcile(study, archive, metrics, driver if shared else None)
    if closed:
        print(f"[search] closed {closed} trials left running by an interrupted run", flush=True)
    if trials_so_far == 0 and search.seed_extremes:
        enqueue_extremes(study, space, searcher.constraint)

    remaining = searcher.remaining(search.budget)
    started = time.time()
    failed = 0
    latency = LatencyPlan()
    if remaining > 0 and runner == "inprocess":
        print(
            f"[search] {search.strategy}: {remaining} of {search.budget} candidates to look up "
            f"in process (search.runner={search.runner}); study {name!r} in "
            f"{redact(storage_url(config))}",
            flush=True,
        )
        _inprocess(config, space_spec, searcher)
    elif remaining > 0:
        print(
            f"[search] {search.strategy}: {remaining} of {search.budget} candidates to evaluate "
            f"with {search.resources.workers} workers; study {name!r} in "
            f"{redact(storage_url(config))}",
            flush=True,
        )
        placement = place(config, STAGE, search.resources)
        local = ensure_ray(config.ray)
        check_placement(config, placement, 1, local)
        latency = start_latency(config, space, space_spec, ctx.folder, local, ctx.fingerprint)
        for target, info in latency.targets.items():
            if "error" in info:
                tracker.log_metrics(
                    ctx.run_id,
                    {
                        f"latency_mape.{target}": info["error"]["mape"],
                        f"latency_tau.{target}": info["error"]["kendall_tau"],
                    },
                )
        failed = _tune(
            config,
            space_spec,
            checkpoint,
            adapter,
            searcher,
            ctx.folder,
            placement,
            latency,
        )
    left = searcher.remaining(search.budget)
    ok = left <= 0 or searcher.exhausted
    if not archive.path.exists():  # other drivers of a shared study evaluated everything
        archive.write()
    outcome = _finish(config, archive, searcher, trained, ctx, time.time() - started, failed, name)
    outcome["latency"] = latency.targets
    outcome["runner"] = runner
    if shared:
        outcome["study_evaluated"] = study_summary(study.get_trials(deepcopy=False))["evaluated"]
    if not ok:
        whole = f"the study holds {search.budget - left}" if shared else f"evaluated {len(archive)}"
        raise UserInputError(
            f"search {whole} of {search.budget} candidates ({failed} trials "
            f"failed; see {ctx.folder / 'tune'}); rerun to continue with the rest"
        )
    tracker.log_metrics(
        ctx.run_id,
        {
            k: outcome[k]
            for k in ("evaluated", "rejected", "duplicates", "failed", "hypervolume", "front_size")
        }
        | {f"hypervolume_reference.{k}": v for k, v in outcome["hypervolume_reference"].items()},
    )
    for name_ in (ARCHIVE_FILE, "pareto.parquet", PLOT_FILE):
        tracker.client.log_artifact(ctx.run_id, str(run_dir / name_))
    return outcome


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "search", "supernet.precision"),
    # runner: Tune and the in-process loop give the same study and archive
    ignores=(
        "search.resources",
        "search.max_trial_failures",
        "search.eval_batch_size",
        "search.runner",
    ),
    extends=("search.budget",),
    # the supernet evaluator needs a supernet, the table evaluator none; `space`: FLORA's filter
    optional=("supernet", "space"),
    provides={"front": ("front", "checkpoint", "checkpoint_sha256", "adapter", "space")},
    writes=(ARCHIVE_FILE, "pareto.parquet", PLOT_FILE),
    describe="score subnets (inherited weights or a table) with Optuna, on Ray Tune or in process",
)


class TrialsFailed(RuntimeError):
    """Evaluation trials crashed: a bug or a broken environment, reported with its traceback."""


def eval_spec(
    config: RaynasConfig,
    space_spec: dict[str, Any],
    checkpoint: str | Path | None,
    adapter: dict[str, Any] | None,
    latency: LatencyPlan,
) -> EvalSpec:
    """What every evaluation of this search needs (Tune trials and the in-process loop)."""
    search = config.search
    # without targets, the trial times the candidate where it runs (a laptop's only device)
    measure = (search.measure_latency or "latency" in search.objectives) and not latency.probes
    return EvalSpec(
        checkpoint=None if checkpoint is None else str(checkpoint),
        evaluator=search.evaluator,
        data=config.data,
        space=space_spec,
        batch_size=search.eval_batch_size,
        precision=config.supernet.precision,
        latency_batch_size=search.latency_batch_size if measure else None,
        latency_repeats=search.latency_repeats,
        latency_predictors=latency.predictors,
        latency_objective=latency.objective,
        adapter=adapter,
    )


def _inprocess(config: RaynasConfig, space_spec: dict[str, Any], searcher: ArchSearch) -> None:
    """Evaluate the rest of the budget in this process (``search.runner`` resolved to
    inprocess: table lookups), through the same searcher and evaluation code as a Tune trial."""
    spec = eval_spec(config, space_spec, None, None, LatencyPlan())
    evaluator = build_evaluator(spec)
    try:
        run_inprocess(
            searcher,
            lambda encoded: candidate_metrics(evaluator, encoded, spec),
            config.search.budget,
        )
    except CandidateError as exc:
        if exc.__cause__ is None:
            raise TrialsFailed(f"search: {exc}") from None
        first = "".join(traceback.format_exception(exc.__cause__)).rstrip()
        raise TrialsFailed(f"search: {exc}; its error:\n{first}") from None


def _tune(
    config: RaynasConfig,
    space_spec: dict[str, Any],
    checkpoint: Path | None,
    adapter: dict[str, Any] | None,
    searcher: ArchSearch,
    folder: Path,
    placement: Any,
    latency: LatencyPlan,
) -> int:
    """Evaluate the rest of the budget through Ray Tune on `placement`; returns how many trials
    errored. Trials whose node died under them are run again elsewhere (Tune's own retries of a
    trial can land on a cached actor of the same dead node before Ray has declared it dead)."""
    from ray import tune

    search = config.search
    spec = eval_spec(config, space_spec, mirror.for_workers(checkpoint), adapter, latency)
    trainable = tune.with_resources(
        tune.with_parameters(evaluate_candidate, spec=spec, probes=latency.probes),
        placement.trial_resources(),
    )
    failed, rounds = 0, 0
    while True:
        before = len(searcher.archive)
        left = searcher.remaining(search.budget)
        if left <= 0:
            break
        searcher.failed.clear()
        # a round after the first re-runs the candidates whose node died under them (enqueued
        # below, so the sampler proposes them first) and whatever else the budget still needs
        name = "tune" if rounds == 0 else f"tune-{rounds + 1}"
        results = _tune_round(trainable, searcher, left, search, folder / name)
        errors = [r for r in results if r.error is not None]
        failed += len(errors)
        rounds += 1
        if not errors or searcher.remaining(search.budget) <= 0 or searcher.exhausted:
            break
        lost = [r for r in errors if lost_node(r.error)]
        if len(lost) < len(errors) or len(searcher.archive) == before or rounds > MAX_LOST_ROUNDS:
            # the first error that is not a lost node says most
            shown = next((r for r in errors if not lost_node(r.error)), errors[0]).error
            first = "".join(traceback.format_exception(shown)).rstrip()
            raise TrialsFailed(
                f"search: {len(errors)} of {len(results)} evaluation trials failed "
                f"(search.max_trial_failures={config.search.max_trial_failures} retries each); "
                f"the first one's error:\n{first}"
            )
        for params in searcher.failed:  # every failure of this round lost its node
            searcher.study.enqueue_trial(params)
        searcher.failed.clear()
        print(
            f"[search] {len(lost)} trials lost their node; evaluating those candidates again "
            f"elsewhere (round {rounds + 1})",
            flush=True,
        )
    if failed:
        print(f"[search] {failed} trials failed; the budget was still met", flush=True)
    return failed


# rounds of re-running candidates whose trials lost their node, each only while the last one
# evaluated something: a cluster that keeps losing nodes ends the search (rerun to continue)
MAX_LOST_ROUNDS = 3


def lost_node(error: BaseException) -> bool:
    """Whether a trial died with the node or worker process under it (re-run elsewhere), not of
    an error in its own code (reported)."""
    from ray import exceptions as rex

    if isinstance(error, rex.RayTaskError):
        error = error.as_instanceof_cause()
    return isinstance(
        error,
        (
            rex.RayActorError,  # ActorDiedError, ActorUnavailableError
            rex.NodeDiedError,
            rex.WorkerCrashedError,
            rex.LocalRayletDiedError,
            rex.ObjectLostError,
        ),
    )


def _tune_round(trainable: Any, searcher: ArchSearch, n: int, search: Any, folder: Path) -> Any:
    """One Ray Tune run of `n` evaluation trials; its results."""
    from ray import tune

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=n,
            max_concurrent_trials=search.resources.workers,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=search.max_trial_failures),
        ),
    )
    try:
        return tuner.fit()
    except Exception as exc:  # the study storage gave up inside Tune's loop: its one line
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, StudyStorageError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def study_summary(trials: list[Any]) -> dict[str, Any]:
    """What a (shared) study holds: the evaluated and running candidates (distinct archs, the
    lowest trial of each), per driver (``host:run_dir``) how many of each."""
    from optuna.trial import TrialState

    first: dict[str, Any] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if is_claim(trial):
            first.setdefault(trial.user_attrs["arch_id"], trial)
    drivers: dict[str, dict[str, int]] = {}
    for trial in first.values():
        label = driver_label(trial.user_attrs.get(DRIVER_ATTR))
        counts = drivers.setdefault(label, {"evaluated": 0, "running": 0})
        counts["evaluated" if trial.state == TrialState.COMPLETE else "running"] += 1
    done = [t for t in first.values() if t.state == TrialState.COMPLETE]
    return {
        "evaluated": len(done),
        "running": len(first) - len(done),
        "trials": done,
        "drivers": drivers,
    }


def _finish(
    config: RaynasConfig,
    archive: Archive,
    searcher: ArchSearch,
    trained: dict[str, Any],
    ctx: StageContext,
    seconds: float,
    failed: int,
    study: str,
) -> dict[str, Any]:
    """Pareto front, plot and the stage result (written by the engine)."""
    run_dir = ctx.run_dir
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
        "evaluator": config.search.evaluator,
        "objectives": list(config.search.objectives),
        "study": study,
        "storage": redact(storage_url(config)),
        "checkpoint": trained["checkpoint"],
        "checkpoint_sha256": trained.get("checkpoint_sha256"),
        "adapter": trained.get("adapter"),
        "space": ctx.space_spec,
        "front": [r["arch_id"] for r in front],
        "front_size": len(front),
        **front_hypervolume(config, rows, ctx),
    }


def front_hypervolume(
    config: RaynasConfig, rows: list[dict[str, Any]], ctx: StageContext
) -> dict[str, Any]:
    """The normalised hypervolume of `rows` over every configured objective, its reference
    point (fixed per space; ``orchestrator.search.pareto``) and each axis's rule."""
    objectives = config.search.objectives
    space = build_space(**ctx.space_spec)
    latency = None
    if "latency" in objectives:
        latency = predicted_ms(config, space, space.largest(), ctx.folder, ctx.fingerprint)
    reference, rules = space_reference(space, objectives, rows, latency)
    return {
        "hypervolume": hypervolume(rows, objectives, reference),
        "hypervolume_reference": reference,
        "hypervolume_rule": rules,
    }
