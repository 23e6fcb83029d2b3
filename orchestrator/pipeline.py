"""`raynas run`: the method's stages in order, under one MLflow parent run, resumable.

Every stage runs through :func:`run_stages`: the declared inputs (``orchestrator.stage``) decide
whether it is skipped, continued or run afresh, and the engine prints why; its MLflow run is
FINISHED, FAILED or KILLED with it; its result file is written last and atomically. One driver
at a time holds a run directory (``orchestrator.rundir.lock``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator import mirror, rundir
from orchestrator.config import load_config
from orchestrator.config.loader import apply_overrides, parse
from orchestrator.config.schema import RunConfig
from orchestrator.errors import ConfigError, UserInputError
from orchestrator.files import remove, write_json_atomic
from orchestrator.runtime import install_sigterm
from orchestrator.secrets import redact
from orchestrator.stage import (
    INPUTS_FILE,
    StageContext,
    StageSpec,
    decide,
    output_digest,
    read_json,
    read_result,
    stage_inputs,
    supersede,
)
from orchestrator.stages import registered
from orchestrator.tracking import Tracker, flatten, tracking_uri
from trainables.storage import is_remote


def config_for_resume(run_dir: str | Path, overrides: Sequence[str] | None = None) -> RunConfig:
    """The config saved in `run_dir`, with `--set` overrides, pointed at `run_dir` (a local path
    or an object-store URI)."""
    path = rundir.fetch(str(run_dir), "config.yaml") / "config.yaml"
    if not path.is_file():
        raise UserInputError(
            f"--resume {run_dir}: no config.yaml there; not a raynas run directory"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(
            str(path), [f"the saved config is damaged{where}: {type(exc).__name__}"]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the saved config is damaged: not a mapping of keys"])
    data = apply_overrides(data, list(overrides or []), str(path))
    data["run_dir"] = str(run_dir) if is_remote(run_dir) else str(Path(run_dir).resolve())
    return parse(data, str(path))


def check_same_run(config: RunConfig) -> None:
    """A run directory holds one run: a different config there needs --resume or a new name."""
    saved = rundir.fetch(config.run_path, "config.yaml") / "config.yaml"
    if not saved.is_file():
        return
    try:
        before = flatten(yaml.safe_load(saved.read_text()) or {})
    except yaml.YAMLError:
        raise ConfigError(str(saved), ["the saved config is damaged (invalid YAML)"]) from None
    after = flatten(config.model_dump(mode="json"))  # flatten redacts, like the saved file
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        raise ConfigError(
            str(saved),
            [
                f"the run directory {saved.parent} holds a run with a different config "
                f"({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} differ); continue it "
                f"with `raynas run --resume {saved.parent}` (plus --set to change values), or "
                "choose another name / run_dir"
            ],
        )


def check_stages(config: RunConfig) -> list[StageSpec]:
    """The declarations of the config's stages; one line naming any that is not registered."""
    stages = registered()
    missing = [s for s in config.stage_names if s not in stages]
    if missing:
        raise UserInputError(
            f"method {config.method!r} needs the stage(s) {', '.join(missing)}, which this version "
            f"does not have yet; available stages: {', '.join(stages)}"
        )
    return [stages[s] for s in config.stage_names]


@contextlib.contextmanager
def sigterm_as_terminated() -> Iterator[None]:
    """SIGTERM (``ray job stop``, Kubernetes, ``kill``) unwinds the driver like Ctrl-C, so
    MLflow runs end KILLED and no result file is written for an unfinished stage."""
    install_sigterm(True)
    try:
        yield
    finally:
        install_sigterm(False)


def run_stages(
    config: RunConfig,
    only: Sequence[str] | None = None,
    inputs: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the config's stages, or just those in `only`; `inputs` replaces
    upstream outputs by name (``raynas search --supernet PATH``). Returns each result."""
    specs = check_stages(config)
    absent = [name for name in only or () if name not in config.stage_names]
    if absent:
        raise UserInputError(
            f"stage(s) {', '.join(absent)} are not among this run's stages "
            f"({', '.join(config.stage_names)}); list them in `stages:` (e.g. "
            f"-s 'stages=[{absent[0]}]')"
        )
    with rundir.lock(config), sigterm_as_terminated():
        path = rundir.prepare(config)
        tracker = Tracker(
            tracking_uri(config.tracking.uri, str(path)),
            config.tracking.experiment,
            str(path),
            config.name,
        )
        with tracker.running(tracker.parent_run_id):
            tracker.log_params(tracker.parent_run_id, flatten(config.model_dump(mode="json")))
            tracker.client.log_artifact(tracker.parent_run_id, str(path / "config.yaml"))
            return _run_all(config, specs, only, dict(inputs or {}), tracker, path)


def _run_all(config, specs, only, overrides, tracker, path) -> dict[str, Any]:
    providers: dict[str, tuple[str, dict[str, Any]]] = {
        name: ("command line", result) for name, result in overrides.items()
    }
    upstream: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, Any] = {}
    chosen = [s for s in specs if only is None or s.name in only]
    for spec in specs:
        if spec not in chosen:
            done = read_result(path, spec.name)
            if done is not None:
                _provide(spec, done, providers, upstream, overrides)
            continue
        missing = [n for n in spec.needs if n not in providers]
        if missing:
            raise UserInputError(_missing_input(spec, missing[0], specs, path))
        number = chosen.index(spec) + 1
        result = _run_one(spec, config, tracker, path, providers, upstream, number, len(chosen))
        _provide(spec, result, providers, upstream, overrides)
        outcomes[spec.name] = result
    return outcomes


def _provide(spec, result, providers, upstream, overrides) -> None:
    upstream[spec.name] = result
    for name in spec.provides:
        if name not in overrides:
            providers[name] = (spec.name, result)


def _missing_input(spec: StageSpec, name: str, specs: list[StageSpec], path: Path) -> str:
    makers = [s.name for s in specs if name in s.provides]
    if makers:
        return (
            f"stage {spec.name} needs the {name} of the {makers[-1]} stage, which has not "
            f"completed in {path}; run it first (`raynas run CONFIG`)"
            + (" or pass --supernet PATH" if name == "supernet" else "")
        )
    return f"stage {spec.name} needs {name!r}, which none of this run's stages provides"


def _run_one(spec, config, tracker, path, providers, upstream, number, total) -> dict[str, Any]:
    folder = path / spec.name
    now = stage_inputs(spec, config, providers)
    before = read_json(folder / INPUTS_FILE, f"the {spec.name} stage's inputs")
    done = read_result(path, spec.name)
    complete = done is not None and done.get("inputs") == (before or {})
    decision = decide(spec, now, before, complete)
    if decision.action == "skip":
        print(f"[{spec.name}] up to date; skipping", flush=True)
        return done
    if decision.action == "fresh":
        moved = supersede(spec, path, (before or {}).get("fingerprint"))
        print(f"[{spec.name}] re-run, {redact(decision.reason)}", flush=True)
        if moved is not None:
            print(f"[{spec.name}] earlier results moved to {moved.relative_to(path)}", flush=True)
    elif decision.action == "continue" and decision.reason:
        print(f"[{spec.name}] re-run, {redact(decision.reason)}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / INPUTS_FILE, now.as_json())
    remove(folder / "result.json")  # running: no longer complete
    started = time.time()
    print(f"\n== raynas: stage {number}/{total}: {spec.name} ({spec.describe}) ==", flush=True)
    run_id = tracker.stage_run(spec.name, fresh=decision.action == "fresh")
    with tracker.running(run_id):
        ctx = StageContext(
            spec=spec,
            config=config,
            run_dir=path,
            tracker=tracker,
            run_id=run_id,
            fingerprint=now.fingerprint,
            inputs={n: providers[n][1] for n in spec.needs + spec.optional if n in providers},
            upstream=dict(upstream),
        )
        result = dict(spec.run(ctx))
        result["inputs"] = now.as_json()
        result["digests"] = {n: output_digest(result, f) for n, f in spec.provides.items()}
        result["seconds"] = result.get("seconds", time.time() - started)
        store = mirror.current()
        if store is not None:  # everything the stage wrote is in the store before its result
            store.sync()
        write_json_atomic(folder / "result.json", result)
        tracker.client.log_artifact(run_id, str(folder / "result.json"))
    print(f"== {spec.name} done in {time.time() - started:.0f} s ==", flush=True)
    return result


def run_pipeline(config: RunConfig) -> dict[str, Any]:
    """Run (or continue) every stage of `config`; returns each stage's result."""
    return run_stages(config)


def load_run_config(
    config_path: str | Path | None, resume: str | Path | None, overrides: Sequence[str] | None
) -> RunConfig:
    """The config of `raynas run CONFIG` or `raynas run --resume RUN_DIR`."""
    if (config_path is None) == (resume is None):
        raise UserInputError("give a CONFIG to start a run, or --resume RUN_DIR to continue one")
    if resume is not None:
        return config_for_resume(resume, overrides)
    config = load_config(config_path, overrides)
    check_same_run(config)
    return config
