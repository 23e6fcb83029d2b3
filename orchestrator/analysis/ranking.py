"""`raynas analyze ranking RUN_DIR`: does the supernet rank subnets as training them would?

Ranking fidelity (DESIGN.md section 4.5): Kendall's tau between the val top-1 a subnet gets
with the supernet's inherited weights and the val top-1 of the same arch trained from scratch.
On a run directory:

1. ``K`` distinct subnets of the run's space (the space the search searched: FLORA's filtered
   one), chosen by :func:`choose_subnets`: about half from the search's Pareto front
   (``pareto.parquet``), evenly spread by FLOPs, topped up from the rest of the archive when
   the front is smaller; the others across the space: the smallest and the largest arch and
   draws of ``random.Random(seed)``. A run without a search takes all of them from the space.
2. Each subnet's **inherited** val top-1: the archive's value when the search scored that arch
   with this very supernet checkpoint (its ``scored_by`` digest), else scored now exactly as
   the search scores (``trainables.evaluator.Evaluator`` with the search's ``EvalSpec``: cell
   supernets recalibrate BatchNorm first).
3. Each subnet's **stand-alone** val top-1: its standalone network (``build_from_spec(
   space.export_spec(arch))``, freshly initialised, as the `retrain` stage trains it) trained
   from scratch for ``--epochs`` on the run's TRAIN split and scored on its VAL split (never
   test), one Ray Tune trial per subnet (``trainables.train.standalone``), ``workers`` at once
   with the resources of ``analysis.ranking.resources``. The recipe is the family's
   (``SearchSpace.standalone_recipe``: AdamW for the ViT families, NAS-Bench-201's SGD for
   cells) with ``analysis.ranking.recipe`` on top.
4. Kendall's tau-b and Spearman's rho (``scipy.stats``) between the two, each with a bootstrap
   interval (:func:`rank_correlations`): ``RESAMPLES`` resamples of the K pairs drawn with
   replacement (``numpy.random.default_rng(seed)``), the statistic recomputed on each, the
   95% interval the 2.5th and 97.5th percentiles (the percentile method). A resample in which
   either side is constant has no rank correlation and is left out; ``valid`` counts the rest.

Resume. Each finished subnet is written at once to ``subnets/<arch_id>.json`` (atomically, by
the driver, stamped with a fingerprint of the arch, recipe, epochs, data and seed); a later
invocation with the same inputs does not train it again. An unfinished one continues from its
last epoch checkpoint (``subnets/<arch_id>/state.pt``, written by the trial every epoch). So a
killed analysis, rerun, trains only what is missing.

Outputs in ``<run>/analysis/ranking/``: ``ranking.json`` (per-subnet rows and the statistics)
and ``ranking.png`` (inherited vs stand-alone), each written under a temporary name and
renamed; a nested MLflow run ``analyze-ranking`` under the run's parent run (one per
invocation) with params, metrics (``kendall_tau``, ``spearman_rho`` and their interval ends)
and both files as artifacts. Every check (arguments, config, supernet, data, resources) runs
before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import atomic_path, write_json_atomic
from orchestrator.tracking import TRACKING_FILE, Tracker, flatten, tracking_uri
from search_spaces import SearchSpace, arch_id, build_space
from search_spaces.base import arch_to_dict
from trainables.storage import is_remote
from trainables.train.config import SupernetTrainConfig

ANALYSIS = "analyze-ranking"
CONFIG_SECTION = "analysis.ranking"
OUTPUT_DIR = ("analysis", "ranking")
RESULT_FILE = "ranking.json"
PLOT_FILE = "ranking.png"
SUBNETS_DIR = "subnets"
TUNE_DIR = "tune"
LOCK_FILE = ".lock"
DEFAULT_SUBNETS = 8
DEFAULT_EPOCHS = 5
MIN_SUBNETS = 3
RESAMPLES = 2000
CONFIDENCE = 0.95
#: recipe keys that do not change a trained subnet (left out of its fingerprint)
NOT_FINGERPRINTED = ("inject_failure", "eval_batch_size")


class TrialsFailed(RuntimeError):
    """Subnet trainings crashed: a bug or a broken environment, reported with its traceback."""


@dataclass(frozen=True)
class Subnet:
    """A chosen subnet: its arch, where it was chosen from and its analytic cost."""

    arch: Any
    aid: str
    source: str  # "front", "archive" (the rest of the search's archive) or "space"
    params: int
    flops: int


def output_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).resolve().joinpath(*OUTPUT_DIR)


# ------------------------------------------------------------------------------ statistics
def rank_correlations(
    inherited: list[float],
    standalone: list[float],
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Kendall's tau-b and Spearman's rho of the pairs, with percentile bootstrap intervals.

    Pure: ``scipy.stats.kendalltau`` / ``spearmanr`` on the pairs, then on ``resamples``
    resamples of the pairs drawn with replacement by ``numpy.random.default_rng(seed)``; the
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the
    resampled statistics. Resamples where either side is constant (no ranking) are skipped.
    A statistic that is undefined (either side constant) is None, as are its interval ends.
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(inherited, dtype=float)
    y = np.asarray(standalone, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(
            f"need two equally long lists of 2 or more values, got {x.shape} and {y.shape}"
        )

    def both(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return math.nan, math.nan
        return float(stats.kendalltau(a, b).statistic), float(stats.spearmanr(a, b).statistic)

    tau, rho = both(x, y)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(resamples, len(x)))
    values = np.array([both(x[row], y[row]) for row in draws]).reshape(resamples, 2)
    valid = values[np.isfinite(values).all(axis=1)]
    tail = 100.0 * (1.0 - confidence) / 2.0

    def interval(column: int, point: float) -> list[float | None]:
        if not math.isfinite(point) or len(valid) == 0:
            return [None, None]
        low, high = np.percentile(valid[:, column], [tail, 100.0 - tail])
        return [float(low), float(high)]

    finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
    return {
        "n": int(len(x)),
        "kendall_tau": finite(tau),
        "kendall_tau_interval": interval(0, tau),
        "spearman_rho": finite(rho),
        "spearman_rho_interval": interval(1, rho),
        "bootstrap": {
            "method": "percentile; pairs resampled with replacement; resamples with a constant "
            "side skipped",
            "resamples": int(resamples),
            "valid": int(len(valid)),
            "confidence": confidence,
            "seed": seed,
        },
    }


# ------------------------------------------------------------------------------ the subnets
def _spread(archs: list[Any], count: int) -> list[Any]:
    """`count` of `archs` (ordered by cost) at evenly spaced positions, both ends included."""
    if count <= 0:
        return []
    if count >= len(archs):
        return list(archs)
    if count == 1:
        return [archs[len(archs) // 2]]
    return [archs[round(i * (len(archs) - 1) / (count - 1))] for i in range(count)]


def choose_subnets(
    space: SearchSpace,
    count: int,
    seed: int,
    front: list[dict[str, Any]] = (),  # type: ignore[assignment]
    archived: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> list[Subnet]:
    """`count` distinct subnets, ordered by (FLOPs, params, arch id).

    ``min(count // 2, count - 2)`` of them from the Pareto front `front` (archive rows, their
    ``arch`` JSON), evenly spread by FLOPs; where the front has fewer, the rest of the archive
    `archived` tops them up (again spread by FLOPs). The others across the space: its smallest
    and largest arch (when not chosen already) and draws of ``random.Random(seed)``. Rows whose
    arch is not in `space` are passed over."""

    def cost(arch: Any) -> tuple[int, int, str]:
        c = space.cost(arch)
        return int(c["flops"]), int(c["params"]), arch_id(arch)

    def parsed(rows) -> dict[str, Any]:
        archs: dict[str, Any] = {}
        for row in rows:
            try:
                arch = space.from_json(row["arch"])
            except (ValueError, KeyError, TypeError):
                continue
            archs.setdefault(arch_id(arch), arch)
        return archs

    on_front = parsed(front)
    rest = {k: a for k, a in parsed(archived).items() if k not in on_front}
    wanted = max(0, min(count // 2, count - 2))
    chosen: dict[str, tuple[Any, str]] = {}
    for arch in _spread(sorted(on_front.values(), key=cost), wanted):
        chosen[arch_id(arch)] = (arch, "front")
    for arch in _spread(sorted(rest.values(), key=cost), wanted - len(chosen)):
        chosen[arch_id(arch)] = (arch, "archive")
    for arch in (space.smallest(), space.largest()):
        chosen.setdefault(arch_id(arch), (arch, "space"))
    rng = random.Random(seed)
    tries = 0
    while len(chosen) < count and tries < 1000 * count:
        arch = space.sample(rng)
        chosen.setdefault(arch_id(arch), (arch, "space"))
        tries += 1
    if len(chosen) < count:
        raise UserInputError(
            f"--subnets {count}: the search space gave only {len(chosen)} distinct subnets; "
            f"allowed: {MIN_SUBNETS}..{len(chosen)}"
        )
    subnets = [
        Subnet(arch, aid, source, cost(arch)[1], cost(arch)[0])
        for aid, (arch, source) in chosen.items()
    ]
    return sorted(subnets, key=lambda s: (s.flops, s.params, s.aid))


# ------------------------------------------------------------------------------ inputs
def ranking_recipe(space: SearchSpace, config: RaynasConfig, epochs: int) -> SupernetTrainConfig:
    """The family's stand-alone recipe, the config's ``analysis.ranking.recipe`` over it, and
    `epochs`; one line naming the key when the combination is not a valid recipe."""
    from pydantic import ValidationError

    values = {**space.standalone_recipe(), **config.analysis.ranking.recipe, "epochs": epochs}
    try:
        return SupernetTrainConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserInputError(
            f"{CONFIG_SECTION}.recipe: {where}={first.get('input')!r} (over the {space.family} "
            f"family's stand-alone recipe): {first['msg']}"
        ) from None


def subnet_fingerprint(
    arch_json: str,
    space_spec: dict[str, Any],
    recipe: SupernetTrainConfig,
    config: RaynasConfig,
    seed: int,
) -> str:
    """What a subnet's stand-alone result depends on: arch, space, recipe, data and seed."""
    from orchestrator.stage import digest

    trained = {
        k: v for k, v in recipe.model_dump(mode="json").items() if k not in NOT_FINGERPRINTED
    }
    return digest(
        {
            "arch": arch_json,
            "space": space_spec,
            "recipe": trained,
            "data": config.data.model_dump(mode="json"),
            "seed": seed,
        }
    )


def searched(run_path: Path, config: RaynasConfig, trained: dict[str, Any]) -> dict[str, Any]:
    """The search's space, Pareto front and archive rows (empty without a search)."""
    from orchestrator.search.archive import ARCHIVE_FILE, Archive
    from orchestrator.search.pareto import PARETO_FILE
    from orchestrator.stage import read_result

    result = read_result(run_path, "search") or {}
    space = result.get("space") or trained.get("space") or config.space_spec
    archived = Archive.load(run_path / ARCHIVE_FILE).rows
    front: list[dict[str, Any]] = []
    if (run_path / PARETO_FILE).exists():
        front = Archive.load(run_path / PARETO_FILE).rows
    return {"space": dict(space), "front": front, "archived": archived}


def inherited_scores(
    subnets: list[Subnet],
    archived: list[dict[str, Any]],
    trained: dict[str, Any],
    config: RaynasConfig,
    space_spec: dict[str, Any],
) -> dict[str, tuple[float, str]]:
    """Per arch id, (inherited val top-1, "archive" or "supernet"): the archive's value where
    this checkpoint scored the arch, else scored now as the search scores."""
    sha = trained.get("checkpoint_sha256")
    known = {
        row["arch_id"]: float(row["val_top1"])
        for row in archived
        if sha is not None
        and row.get("scored_by") == sha
        and row.get("val_top1") is not None
        and math.isfinite(float(row["val_top1"]))
    }
    scores = {s.aid: (known[s.aid], "archive") for s in subnets if s.aid in known}
    missing = [s for s in subnets if s.aid not in known]
    if missing:
        from orchestrator.search.latency import LatencyPlan
        from orchestrator.stages.search import eval_spec
        from trainables.evaluator import Evaluator

        spec = eval_spec(
            config, space_spec, trained["checkpoint"], trained.get("adapter"), LatencyPlan()
        )
        evaluator = Evaluator(replace(spec, evaluator="supernet", purpose=ANALYSIS))
        for subnet in missing:
            scores[subnet.aid] = (float(evaluator.score(subnet.arch)["val_top1"]), "supernet")
    return scores


def finished_results(out: Path, fingerprints: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The subnets' stand-alone results already written with the same fingerprint."""
    done = {}
    for aid, fingerprint in fingerprints.items():
        path = out / SUBNETS_DIR / f"{aid}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
            done[aid] = record
    return done


# ------------------------------------------------------------------------------ training
RECORDED = (
    "val_top1", "val_loss", "train_loss", "train_top1", "epochs", "resumed_from", "params",
    "train_images", "val_images", "device", "pid", "node_id", "node_group", "start_time",
    "end_time",
)  # fmt: skip


def _recorder(out: Path, subnets: dict[str, Subnet], total: int, done: int):
    """A Tune callback, in the driver: each subnet's result written as soon as its trial
    reports it (then its epoch checkpoint removed), and one progress line per epoch."""
    from ray import tune

    class Recorder(tune.Callback):
        def __init__(self) -> None:
            self.done = done

        def on_trial_result(self, iteration, trials, trial, result) -> None:
            aid = result.get("arch_id")
            if aid not in subnets:
                return
            if not result.get("final"):
                print(
                    f"[ranking] {aid} epoch {result['epoch']}/{result['epochs']}  "
                    f"loss {result['train_loss']:.4f}  val {result['val_top1']:.2f}%",
                    flush=True,
                )
                return
            record = {k: result.get(k) for k in RECORDED}
            record.update(
                arch_id=aid,
                fingerprint=result["fingerprint"],
                history=json.loads(result["history"]),
                seconds=result["end_time"] - result["start_time"],
            )
            write_json_atomic(out / SUBNETS_DIR / f"{aid}.json", record, allow_nan=False)
            shutil.rmtree(out / SUBNETS_DIR / aid, ignore_errors=True)
            self.done += 1
            print(
                f"[ranking] {self.done}/{total}  {aid}  stand-alone val {record['val_top1']:.2f}% "
                f"after {_epochs(record['epochs'])}  ({record['seconds']:.0f} s)",
                flush=True,
            )

    return Recorder()


def train_subnets(
    config: RaynasConfig,
    todo: list[tuple[Subnet, str]],
    recipe: SupernetTrainConfig,
    space_spec: dict[str, Any],
    seed: int,
    out: Path,
    placement: Any,
    total: int,
) -> list[Any]:
    """One Ray Tune run training `todo` ((subnet, fingerprint) pairs); the errored results."""
    from ray import tune

    from trainables.train.standalone import SubnetJob, subnet_trial

    ranking = config.analysis.ranking
    job = SubnetJob(
        train=recipe, data=config.data, space=space_spec, arch="", seed=seed, folder="",
        fingerprint="", purpose=ANALYSIS,
    )  # fmt: skip
    trainable = tune.with_resources(
        tune.with_parameters(subnet_trial, job=job), placement.trial_resources()
    )
    subnets = {s.aid: s for s, _ in todo}
    grid = [
        {
            "arch_id": s.aid,
            "arch": json.dumps(arch_to_dict(s.arch), sort_keys=True, separators=(",", ":")),
            "folder": str(out / SUBNETS_DIR / s.aid),
            "fingerprint": fingerprint,
        }
        for s, fingerprint in todo
    ]
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # one Tune run per invocation
    tuner = tune.Tuner(
        trainable,
        param_space={"subnet": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=ranking.resources.workers,
            reuse_actors=True,
            trial_name_creator=lambda t: f"subnet_{t.config['subnet']['arch_id']}",
            trial_dirname_creator=lambda t: f"subnet_{t.config['subnet']['arch_id']}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(out / TUNE_DIR),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=ranking.max_trial_failures),
            callbacks=[_recorder(out, subnets, total, total - len(todo))],
        ),
    )
    results = tuner.fit()
    return [r for r in results if r.error is not None]


# ------------------------------------------------------------------------------ the plot
def plot_ranking(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Inherited (x) vs stand-alone (y) val top-1, one marker per source, arch ids beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    styles = {"front": ("o", "C0", "Pareto front"), "archive": ("s", "C2", "archive"),
              "space": ("^", "C1", "space")}  # fmt: skip
    for source, (marker, color, label) in styles.items():
        chosen = [r for r in rows if r["source"] == source]
        if chosen:
            ax.scatter(
                [r["inherited_val_top1"] for r in chosen],
                [r["standalone_val_top1"] for r in chosen],
                marker=marker, c=color, s=36, label=f"{label} ({len(chosen)})", zorder=3,
            )  # fmt: skip
    if len(rows) <= 24:
        for r in rows:
            ax.annotate(
                r["arch_id"][:6], (r["inherited_val_top1"], r["standalone_val_top1"]),
                textcoords="offset points", xytext=(4, 3), fontsize=6, color="0.35",
            )  # fmt: skip
    ax.set_xlabel("inherited val top-1 (%), supernet weights")
    ax.set_ylabel("stand-alone val top-1 (%), trained from scratch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _shown(value: float | None, interval: list[float | None]) -> str:
    if value is None:
        return "undefined"
    low, high = interval
    ends = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{value:.3f}{ends}"


# ------------------------------------------------------------------------------ the analysis
@contextlib.contextmanager
def _locked(out: Path):
    """One `analyze ranking` per run directory at a time (an OS lock, freed however it ends)."""
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserInputError(
            f"{out}: another `raynas analyze ranking` is running on this run directory; wait "
            "for it to finish or stop it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def analyze_ranking(
    run_dir: str | Path,
    subnets: int = DEFAULT_SUBNETS,
    epochs: int = DEFAULT_EPOCHS,
    seed: int | None = None,
    overrides: list[str] | None = None,
    verbose: bool | None = None,
) -> dict[str, Any]:
    """Run the analysis on `run_dir` and return what `ranking.json` holds (plus its path and
    the ids trained by this invocation, ``trained``).

    `seed` defaults to the run's `seed`; `overrides` are `--set KEY=VALUE` items over the saved
    config (e.g. ``analysis.ranking.resources.workers=4``); `verbose` (the CLI's) routes the
    libraries' logs to ``RUN_DIR/raynas.log`` before Ray starts (None: leave logging alone).
    Raises `UserInputError` (before writing anything but that log) for bad arguments, a folder
    that is not a run directory, a run without a trained supernet, a recipe, data or resources
    that do not fit; `TrialsFailed` when trainings crashed (the finished ones are kept).
    """
    from orchestrator.analysis.collapse import trained_supernet
    from orchestrator.pipeline import config_for_resume
    from orchestrator.runtime import check_placement, ensure_ray, place
    from trainables.data.splits import open_splits
    from trainables.train.loop import check_data_fits_space

    if subnets < MIN_SUBNETS:
        raise UserInputError(
            f"--subnets {subnets}: a rank correlation needs several subnets; allowed: "
            f"{MIN_SUBNETS} or more"
        )
    if epochs < 1:
        raise UserInputError(f"--epochs {epochs}: allowed: 1 or more")
    if is_remote(str(run_dir)):
        raise UserInputError(
            f"{run_dir}: `raynas analyze ranking` reads a local run directory; copy the run "
            "from the store first (e.g. `raynas report` fills the local mirror, see README)"
        )
    run_path = Path(run_dir).resolve()
    if not (run_path / "config.yaml").is_file():
        raise UserInputError(f"{run_dir}: no config.yaml there; not a raynas run directory")
    config = config_for_resume(run_path, overrides)
    seed = config.seed if seed is None else seed
    ranking = config.analysis.ranking

    trained = trained_supernet(config)
    found = searched(run_path, config, trained)
    space_spec = found["space"]
    space = build_space(**space_spec)
    chosen = choose_subnets(space, subnets, seed, found["front"], found["archived"])
    recipe = ranking_recipe(space, config, epochs)
    splits = open_splits(config.data, ("train", "val"), purpose=ANALYSIS)
    check_data_fits_space(splits, space)
    train_size, val_size = len(splits.split("train")), len(splits.split("val"))
    if recipe.batch_size > train_size:
        raise UserInputError(
            f"{CONFIG_SECTION}.recipe.batch_size={recipe.batch_size} exceeds the {train_size} "
            f"train images of {run_dir}; allowed: 1..{train_size}"
        )
    placement = place(config, CONFIG_SECTION, ranking.resources)
    inherited = inherited_scores(chosen, found["archived"], trained, config, space_spec)
    out = output_dir(run_path)
    fingerprints = {
        s.aid: subnet_fingerprint(space.to_json(s.arch), space_spec, recipe, config, seed)
        for s in chosen
    }
    todo = [s for s in chosen if s.aid not in finished_results(out, fingerprints)]
    if verbose is not None:  # before Ray starts: its logs and its workers' output are routed too
        from orchestrator.console import setup_logging

        setup_logging(run_path, verbose)
    if todo:
        local = ensure_ray(config.ray)
        check_placement(config, placement, 1, local)

    # Everything is checked; from here on files and MLflow runs are written.
    started = time.perf_counter()
    with _locked(out):
        uri = tracking_uri(config.tracking.uri, str(run_path))
        new_parent = not (run_path / TRACKING_FILE).exists()
        tracker = Tracker(uri, config.tracking.experiment, str(run_path), config.name)
        run = tracker.client.create_run(
            tracker.experiment_id,
            run_name=ANALYSIS,
            tags={"mlflow.parentRunId": tracker.parent_run_id, "raynas.stage": ANALYSIS},
        )
        run_id = run.info.run_id
        parent = tracker.running(tracker.parent_run_id) if new_parent else contextlib.nullcontext()
        with parent, tracker.running(run_id):
            tracker.log_params(
                run_id,
                flatten(
                    {
                        "subnets": subnets,
                        "epochs": epochs,
                        "seed": seed,
                        "resamples": RESAMPLES,
                        "confidence": CONFIDENCE,
                        "checkpoint": trained["checkpoint"],
                        "checkpoint_sha256": trained.get("checkpoint_sha256"),
                        "recipe": recipe.model_dump(mode="json"),
                        "resources": ranking.resources.model_dump(mode="json"),
                    }
                ),
            )
            (out / SUBNETS_DIR).mkdir(parents=True, exist_ok=True)
            reused = len(chosen) - len(todo)
            print(
                f"[ranking] {len(chosen)} subnets of {config.name}: {len(todo)} to train from "
                f"scratch for {_epochs(epochs)} ({reused} done before), {ranking.resources.workers} "
                "at once",
                flush=True,
            )
            errors = []
            if todo:
                pairs = [(s, fingerprints[s.aid]) for s in todo]
                errors = train_subnets(
                    config, pairs, recipe, space_spec, seed, out, placement, len(chosen)
                )
            results = finished_results(out, fingerprints)
            missing = [s.aid for s in chosen if s.aid not in results]
            if missing:
                import traceback

                shown = ""
                if errors:
                    first = "".join(traceback.format_exception(errors[0].error)).rstrip()
                    shown = f"; the first one's error:\n{first}"
                raise TrialsFailed(
                    f"analyze ranking: {len(missing)} of {len(chosen)} subnet trainings did not "
                    f"finish ({CONFIG_SECTION}.max_trial_failures={ranking.max_trial_failures} "
                    f"retries each; see {out / TUNE_DIR}); rerun to continue: finished subnets "
                    f"are kept, unfinished ones resume from their last epoch{shown}"
                )

            rows = []
            for subnet in chosen:
                record = results[subnet.aid]
                value, source = inherited[subnet.aid]
                rows.append(
                    {
                        "arch_id": subnet.aid,
                        "arch": arch_to_dict(subnet.arch),
                        "text": space.describe(subnet.arch),
                        "source": subnet.source,
                        "params": subnet.params,
                        "flops": subnet.flops,
                        "inherited_val_top1": value,
                        "inherited_from": source,
                        "standalone_val_top1": record["val_top1"],
                        "standalone_val_loss": record["val_loss"],
                        "trained_now": subnet in todo,
                        "standalone": {
                            k: v for k, v in record.items() if k not in ("arch_id", "val_top1")
                        },
                    }
                )
            statistics = rank_correlations(
                [r["inherited_val_top1"] for r in rows],
                [r["standalone_val_top1"] for r in rows],
                seed=seed,
            )
            result: dict[str, Any] = {
                "run_dir": str(run_path),
                "run_name": config.name,
                "method": config.method,
                "family": space.family,
                "space": space_spec,
                "supernet": {
                    "checkpoint": trained["checkpoint"],
                    "checkpoint_sha256": trained.get("checkpoint_sha256"),
                    "adapter": trained.get("adapter"),
                },
                "seed": seed,
                "subnets": subnets,
                "epochs": epochs,
                "recipe": recipe.model_dump(mode="json"),
                "splits": {"train": train_size, "scored_on": "val", "val": val_size},
                "statistics": statistics,
                "rows": rows,
                "trained": [s.aid for s in todo],
                "seconds": round(time.perf_counter() - started, 3),
                "mlflow_run_id": run_id,
            }
            json_path = out / RESULT_FILE
            png_path = out / PLOT_FILE
            write_json_atomic(json_path, result, allow_nan=False)
            tau = statistics["kendall_tau"]
            rho = statistics["spearman_rho"]
            title = (
                f"{config.name}: {len(rows)} subnets, {_epochs(epochs)} from scratch\n"
                f"Kendall tau {_shown(tau, statistics['kendall_tau_interval'])}, Spearman rho "
                f"{_shown(rho, statistics['spearman_rho_interval'])} "
                f"({round(100 * CONFIDENCE)}% bootstrap)"
            )
            plot_ranking(rows, png_path, title)

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics: dict[str, float | None] = {
                "kendall_tau": tau,
                "kendall_tau_low": statistics["kendall_tau_interval"][0],
                "kendall_tau_high": statistics["kendall_tau_interval"][1],
                "spearman_rho": rho,
                "spearman_rho_low": statistics["spearman_rho_interval"][0],
                "spearman_rho_high": statistics["spearman_rho_interval"][1],
                "trained_subnets": float(len(todo)),
            }
            batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
            for step, row in enumerate(rows):
                batch.append(Metric("inherited_val_top1", row["inherited_val_top1"], now, step))
                batch.append(Metric("standalone_val_top1", row["standalone_val_top1"], now, step))
            tracker.client.log_batch(run_id, metrics=batch)
            for path in (json_path, png_path):
                tracker.client.log_artifact(run_id, str(path), artifact_path="ranking")
    return {**result, "path": str(out)}
