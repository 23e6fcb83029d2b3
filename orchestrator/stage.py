"""Stages declared as data, and the one way a stage runs.

A :class:`StageSpec` says what a stage reads (config keys, and outputs of earlier stages by
name), what it provides to later stages, and which files of the run directory it owns. From
that the engine derives everything else, for every stage alike:

* its **fingerprint**: a hash of the config values it reads and of the upstream outputs it
  needs. The stage writes it to ``<stage>/inputs.json`` when it starts and into its result file
  when it completes;
* whether to **skip** it (same fingerprint, result complete), **continue** it (same
  fingerprint, an ``extends`` key grew, e.g. ``search.budget``: the stage picks up its own
  state), or run it **afresh** (anything else it reads changed: its old files are moved to
  ``superseded/`` so nothing is ever mixed from two different inputs), and why;
* where its upstream results come from: an output name (``"supernet"``) is provided by the
  latest earlier stage of the run that declares it, so a stage never imports another stage.

Result files hold paths relative to the run directory (``StageContext.rel``), so a run
directory that was copied or moved resumes, exports and reports from its own files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import mirror
from orchestrator.errors import UserInputError
from orchestrator.secrets import redact

INPUTS_FILE = "inputs.json"
SUPERSEDED = "superseded"


@dataclass(frozen=True)
class StageSpec:
    """A stage, as data.

    Attributes:
        name: the stage's name in configs (``stages: [...]``) and its folder in the run dir.
        run: ``StageContext -> result dict`` (JSON-serialisable, paths made relative with
            ``ctx.rel``); the engine writes it to ``result`` with the stage's inputs.
        reads: config keys or sections (dotted) whose values the result depends on.
        ignores: keys under ``reads`` that do not change the result (resources, retries).
        extends: keys under ``reads`` along which a finished result may grow: a larger value
            continues the stage from its own state instead of starting afresh.
        needs: outputs of earlier stages it reads, by name.
        optional: outputs it reads when an earlier stage of the run provides them.
        provides: output name -> the result fields that make it up (their digest is what
            a downstream stage's fingerprint sees).
        writes: files and folders (relative to the run dir) that hold the stage's state.
        always: run every time (cheap summaries such as the report).
        describe: one line shown before the stage runs.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    reads: tuple[str, ...] = ()
    ignores: tuple[str, ...] = ()
    extends: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    provides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    writes: tuple[str, ...] = ()
    always: bool = False
    describe: str = ""

    @property
    def result(self) -> str:
        return f"{self.name}/result.json"


@dataclass
class StageContext:
    """What a running stage sees: its config, its folder, its upstream results, its MLflow run."""

    spec: StageSpec
    config: Any  # orchestrator.config.schema.RunConfig
    run_dir: Path
    tracker: Any  # orchestrator.tracking.Tracker
    run_id: str
    fingerprint: str
    inputs: dict[str, dict[str, Any]]
    upstream: dict[str, dict[str, Any]]  # every earlier stage's result, by stage name

    @property
    def folder(self) -> Path:
        return self.run_dir / self.spec.name

    def input(self, name: str) -> dict[str, Any]:
        try:
            return self.inputs[name]
        except KeyError:
            raise UserInputError(
                f"stage {self.spec.name} needs {name!r}, which no stage before it provided"
            ) from None

    @property
    def space_spec(self) -> dict[str, Any]:
        """``build_space`` arguments of the run's space: the ``space`` output of an earlier
        stage where one provided it (FLORA's pretrain takes the dense model's shape, its filter
        restricts the blocks), else the config's ``space`` section."""
        given = self.inputs.get("space")
        if given is not None and given.get("space"):
            return dict(given["space"])
        return self.config.space_spec

    def path(self, relative: str | Path) -> Path:
        """A path a result file recorded, in this run directory."""
        path = Path(relative)
        return path if path.is_absolute() else self.run_dir / path

    def rel(self, path: str | Path) -> str:
        """`path` relative to the run directory when it lies inside it (else absolute)."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.run_dir).as_posix()
        except ValueError:
            return str(path)


# ------------------------------------------------------------------------------- fingerprints
def _selected(flat: Mapping[str, str], keys: tuple[str, ...], drop: tuple[str, ...] = ()) -> dict:
    def under(key: str, prefixes: tuple[str, ...]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    return {k: flat[k] for k in sorted(flat) if under(k, keys) and not under(k, drop)}


def digest(data: Any) -> str:
    """Stable hash of JSON-serialisable data."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def output_digest(result: Mapping[str, Any], fields: tuple[str, ...]) -> str:
    return digest({f: result.get(f) for f in fields})


@dataclass(frozen=True)
class Inputs:
    """The inputs of one stage for one config: what its fingerprint is made of."""

    config: dict[str, str]  # read config values (redacted), without `extends` keys
    extends: dict[str, str]
    upstream: dict[str, str]  # output name -> "stage:digest"

    @property
    def fingerprint(self) -> str:
        return digest({"config": self.config, "upstream": self.upstream})

    def as_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "config": self.config,
            "extends": self.extends,
            "upstream": self.upstream,
        }


def flat_config(config: Any) -> dict[str, str]:
    from orchestrator.tracking import flatten

    return {k: redact(v) for k, v in flatten(config.model_dump(mode="json")).items()}


def stage_inputs(
    spec: StageSpec, config: Any, providers: Mapping[str, tuple[str, dict[str, Any]]]
) -> Inputs:
    flat = flat_config(config)
    upstream = {}
    for name in spec.needs + spec.optional:
        if name in providers:
            stage, result = providers[name]
            upstream[name] = f"{stage}:{result.get('digests', {}).get(name, '')}"
    return Inputs(
        config=_selected(flat, spec.reads, spec.ignores + spec.extends),
        extends=_selected(flat, spec.extends),
        upstream=upstream,
    )


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Decision:
    action: str  # "run" (first time), "skip", "continue", "fresh"
    reason: str = ""


def decide(spec: StageSpec, now: Inputs, before: Mapping[str, Any] | None, done: bool) -> Decision:
    """What to do with a stage whose earlier inputs were `before` (None: never started)."""
    if before is None:
        return Decision("run")
    if spec.always:
        return Decision("continue", "")
    if before.get("fingerprint") != now.fingerprint:
        return Decision("fresh", _why(before, now))
    grew, shrank = [], []
    for key, value in now.extends.items():
        old = before.get("extends", {}).get(key)
        if old == value:
            continue
        a, b = _number(old), _number(value)
        (grew if a is not None and b is not None and b > a else shrank).append(
            f"{key} {old} -> {value}"
        )
    if shrank:
        return Decision("fresh", ", ".join(shrank))
    if grew:
        return Decision("continue", ", ".join(grew))
    return Decision("skip" if done else "continue", "" if done else "continuing where it stopped")


def _why(before: Mapping[str, Any], now: Inputs) -> str:
    reasons = []
    old_cfg = before.get("config", {})
    for key in sorted(old_cfg.keys() | now.config.keys()):
        if old_cfg.get(key) != now.config.get(key):
            reasons.append(
                f"{key} {old_cfg.get(key, '(unset)')} -> {now.config.get(key, '(unset)')}"
            )
    old_up = before.get("upstream", {})
    for name in sorted(old_up.keys() | now.upstream.keys()):
        if old_up.get(name) != now.upstream.get(name):
            reasons.append(f"the {name} changed")
    if len(reasons) > 4:
        reasons = reasons[:4] + [f"{len(reasons) - 4} more"]
    return ", ".join(reasons) or "its inputs changed"


# ------------------------------------------------------------------------------- run dir state
def read_json(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON file of the run directory (None when absent); one line when it is damaged."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(
            f"{path}: {what} is damaged ({type(exc).__name__}: {exc}); move it away to run the "
            "stage again"
        ) from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: {what} is damaged (not a JSON object)")
    return data


def read_result(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The completed result of `stage` in `run_dir`, or None."""
    return read_json(Path(run_dir) / stage / "result.json", f"the {stage} stage's result")


def supersede(spec: StageSpec, run_dir: Path, fingerprint: str | None) -> Path | None:
    """Move the stage's files aside (``superseded/<stage>-<fingerprint>-<time>``)."""
    present = [p for p in (spec.name, *spec.writes) if (run_dir / p).exists()]
    if not present:
        return None
    target = (
        run_dir / SUPERSEDED / f"{spec.name}-{(fingerprint or 'unknown')[:8]}-{int(time.time())}"
    )
    target.mkdir(parents=True, exist_ok=True)
    for rel in present:
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir / rel), str(destination))
        mirror.removed(run_dir / rel)
    return target
