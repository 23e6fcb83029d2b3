"""`raynas run`: the method's stages in order, under one MLflow parent run, resumable.

Each stage skips itself when its result file says it completed, and otherwise continues from
what it left in the run directory (supernet checkpoints, the Optuna study and the archive,
exported folders). So resuming a run is running it again on the same directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator import rundir
from orchestrator.config import load_config
from orchestrator.config.loader import apply_overrides, parse
from orchestrator.config.schema import RunConfig
from orchestrator.errors import ConfigError, UserInputError
from orchestrator.stages.export import run_export_stage
from orchestrator.stages.mole import run_mole_stage
from orchestrator.stages.report import run_report_stage
from orchestrator.stages.search import run_search_stage
from orchestrator.stages.supernet import run_supernet_stage
from orchestrator.tracking import Tracker, flatten, tracking_uri

RUNNERS: dict[str, Callable[..., Any]] = {
    "supernet": run_supernet_stage,
    "mole": run_mole_stage,
    "search": run_search_stage,
    "export": run_export_stage,
    "report": run_report_stage,
}


def config_for_resume(run_dir: str | Path, overrides: Sequence[str] | None = None) -> RunConfig:
    """The config saved in `run_dir`, with `--set` overrides, pointed at `run_dir`."""
    path = Path(run_dir).resolve() / "config.yaml"
    if not path.is_file():
        raise UserInputError(
            f"--resume {run_dir}: no config.yaml there; not a raynas run directory"
        )
    data = yaml.safe_load(path.read_text())
    data = apply_overrides(data, list(overrides or []), str(path))
    data["run_dir"] = str(Path(run_dir).resolve())
    return parse(data, str(path))


def check_same_run(config: RunConfig) -> None:
    """A run directory holds one run: a different config there needs --resume or a new name."""
    saved = Path(config.run_path).resolve() / "config.yaml"
    if not saved.is_file():
        return
    before = flatten(yaml.safe_load(saved.read_text()))
    after = flatten(config.model_dump(mode="json"))
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


def check_stages(config: RunConfig) -> None:
    missing = [s for s in config.stage_names if s not in RUNNERS]
    if missing:
        raise UserInputError(
            f"method {config.method!r} needs the stage(s) {', '.join(missing)}, which this version "
            f"does not have yet; available stages: {', '.join(RUNNERS)}"
        )


def run_pipeline(config: RunConfig) -> dict[str, Any]:
    """Run (or continue) every stage of `config`; returns each stage's outcome."""
    check_stages(config)
    path = rundir.prepare(config)
    tracker = Tracker(
        tracking_uri(config.tracking.uri, str(path)),
        config.tracking.experiment,
        str(path),
        config.name,
    )
    tracker.client.update_run(tracker.parent_run_id, status="RUNNING")
    tracker.log_params(tracker.parent_run_id, flatten(config.model_dump(mode="json")))
    tracker.client.log_artifact(tracker.parent_run_id, str(path / "config.yaml"))
    outcomes: dict[str, Any] = {}
    stages = config.stage_names
    try:
        for i, stage in enumerate(stages, 1):
            started = time.time()
            print(f"\n== raynas: stage {i}/{len(stages)}: {stage} ==", flush=True)
            outcomes[stage] = RUNNERS[stage](config, tracker=tracker)
            print(f"== {stage} done in {time.time() - started:.0f} s ==", flush=True)
    except BaseException:
        tracker.finish(tracker.parent_run_id, ok=False)
        raise
    tracker.finish(tracker.parent_run_id, ok=True)
    return outcomes


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
