"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

The default store is an embedded SQLite file in the run directory, with its artifacts in
`<run>/mlartifacts`; any `http(s)://` tracking server works. Run ids live in
`<run>/tracking.json`, so a resumed stage logs into the run it started. Training metrics reach
MLflow from rank 0 only, through a Ray Train callback in the Train controller (see
`stages/supernet.py`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.errors import Terminated, UserInputError
from orchestrator.files import write_json_atomic
from orchestrator.secrets import redact, resolve

TRACKING_FILE = "tracking.json"
ARTIFACTS_DIR = "mlartifacts"  # the embedded store's artifacts, beside <run>/mlflow.db
REACH_TIMEOUT_S = 5.0
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # not the GenAI view


class TrackingError(UserInputError):
    """The tracking server cannot be reached or used."""


def tracking_uri(configured: str | None, run_dir: str) -> str:
    """The URI to connect to (``${NAME}`` expanded; may hold a password: never print it)."""
    if configured is not None:
        return resolve(configured, "tracking.uri")
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def check_reachable(uri: str) -> None:
    """Fail before any work starts when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri.rstrip("/") + "/health")
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    )
    if parts.username is not None:  # credentials in the URL: basic auth, as MLflow sends them
        pair = (
            f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        )
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    shown = redact(uri)
    try:
        with urllib.request.urlopen(request, timeout=REACH_TIMEOUT_S) as response:
            if response.status != 200:
                raise TrackingError(
                    f"tracking.uri={shown}: /health answered HTTP {response.status}, not 200"
                )
    except urllib.error.HTTPError as exc:
        raise TrackingError(
            f"tracking.uri={shown}: /health answered HTTP {exc.code}; is this an MLflow server?"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"tracking.uri={shown}: MLflow server unreachable ({redact(str(reason))}); start one with `mlflow server`, "
            "or set tracking.uri: null for the embedded store in the run directory"
        ) from None


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} for MLflow params (values as strings, max 6000 chars)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix.rstrip(".")] = redact(str(data))[:6000]
    return out


class Tracker:
    """The MLflow runs of one run directory."""

    def __init__(self, uri: str, experiment: str, run_dir: str, run_name: str) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        check_reachable(uri)
        # MLflow prints "View run ... at: <tracking URL>" when a fluent run ends: the URL may
        # hold a password, and the stage lines already say where everything is
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        try:
            self.experiment_id = self._experiment_id(experiment)
        except Exception as exc:  # any store/server failure here is a setup problem of the user's
            raise TrackingError(
                f"tracking.uri={redact(uri)}: cannot open experiment {experiment!r}: "
                f"{redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}"
            ) from None
        self._mark_model_training()
        self.state = self._read_state()
        if "parent" not in self.state:
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={"raynas.run_dir": str(self.run_dir.resolve()), **source_tags()},
            )
            self.state = {"parent": run.info.run_id, "stages": {}}
            self._write_state()

    def _experiment_id(self, experiment: str) -> str:
        """The experiment's id, created when it does not exist yet. Drivers sharing a tracking
        server may create it at the same moment: the one that loses the race uses the other's."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                experiment, artifact_location=self._artifact_location()
            )
        except MlflowException as exc:
            found = self.client.get_experiment_by_name(experiment)
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
                raise
            return found.experiment_id

    def _artifact_location(self) -> str | None:
        """The embedded store keeps its artifacts in the run directory too; MLflow's default,
        `./mlruns` under the current directory, is a throwaway copy under `ray job submit`."""
        if self.uri != tracking_uri(None, str(self.run_dir)):
            return None  # a server or a shared store decides
        return (self.run_dir.resolve() / ARTIFACTS_DIR).as_uri()

    @property
    def parent_run_id(self) -> str:
        return self.state["parent"]

    def _mark_model_training(self) -> None:
        """MLflow 3 opens an experiment without this tag on its GenAI overview ("Traces 0")."""
        key, value = EXPERIMENT_KIND
        try:
            tags = self.client.get_experiment(self.experiment_id).tags
            if tags.get(key) != value:
                self.client.set_experiment_tag(self.experiment_id, key, value)
        except Exception:  # an older server without experiment tags: the UI view is cosmetic
            pass

    def _read_state(self) -> dict[str, Any]:
        from orchestrator.stage import read_json

        state = read_json(self.run_dir / TRACKING_FILE, "the MLflow run ids file")
        if state is not None and not isinstance(state.get("parent"), str):
            raise UserInputError(
                f"{self.run_dir / TRACKING_FILE}: the MLflow run ids file is damaged (no parent "
                "run id); move it away to start new MLflow runs"
            )
        if state is not None:
            state.setdefault("stages", {})
        return state or {}

    def _write_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / TRACKING_FILE, self.state)

    def stage_run(self, stage: str, fresh: bool = False) -> str:
        """The nested run of `stage` (created once, reopened on resume; a new one when the
        stage starts afresh because its inputs changed)."""
        run_id = self.state["stages"].get(stage)
        if run_id is not None and fresh:
            self.client.set_tag(run_id, "raynas.superseded", "true")
            run_id = None
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=stage,
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "raynas.stage": stage,
                    **source_tags(),
                },
            )
            run_id = run.info.run_id
            self.state["stages"][stage] = run_id
            self._write_state()
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.client.update_run(self.parent_run_id, status="RUNNING")
        return run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> dict[str, tuple[str, str]]:
        """Log `params` (values redacted). MLflow params cannot change, so a value that differs
        from the logged one (a resume with --set) is logged as ``<key>.resume_<n>`` and listed
        in the ``raynas.changed_params`` tag; returns {key: (old, new)} of those."""
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh, changed = [], {}
        for key, value in params.items():
            value = redact(str(value))[:6000]
            if key not in existing:
                fresh.append(Param(key, value))
                continue
            versions = [existing[key]] + [
                existing[f"{key}.resume_{n}"]
                for n in range(1, 1000)
                if f"{key}.resume_{n}" in existing
            ]
            if versions[-1] != value:
                fresh.append(Param(f"{key}.resume_{len(versions)}", value))
                changed[key] = (versions[-1], value)
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100])
        if changed:
            before = self.client.get_run(run_id).data.tags.get("raynas.changed_params", "")
            keys = sorted(set(filter(None, before.split(","))) | set(changed))
            self.client.set_tag(run_id, "raynas.changed_params", ",".join(keys)[:5000])
        return changed

    def log_dataset(self, run_id: str, splits: Any, config: Any, context: str) -> None:
        """The run's data as an MLflow dataset input: name, source, a digest of its identity
        and the split sizes (the runs table's Dataset column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from orchestrator.stage import digest

        identity = {
            "data": config.model_dump(mode="json"),
            "sizes": splits.sizes(),
            "origin": str(splits.origin),
        }
        entity = Dataset(
            name=config.name,
            digest=digest(identity),
            source_type="local" if "://" not in str(splits.origin) else "uri",
            source=json.dumps({"uri": redact(str(splits.origin))}),
            profile=json.dumps({f"{k}_images": v for k, v in splits.sizes().items()}),
        )
        self.client.log_inputs(
            run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]
        )

    @contextlib.contextmanager
    def running(self, run_id: str) -> Iterator[str]:
        """Mark `run_id` RUNNING for the block; then FINISHED, FAILED on an exception, KILLED
        on Ctrl-C or SIGTERM. The one place run statuses are set."""
        self.client.update_run(run_id, status="RUNNING")
        try:
            yield run_id
        except (KeyboardInterrupt, Terminated):
            self._terminate(run_id, "KILLED")
            raise
        except BaseException:
            from orchestrator.runtime import sigterm_received

            self._terminate(run_id, "KILLED" if sigterm_received() else "FAILED")
            raise
        self._terminate(run_id, "FINISHED")

    def _terminate(self, run_id: str, status: str) -> None:
        try:
            self.client.set_terminated(run_id, status=status)
        except Exception:  # the store went away while we were failing: the first error matters
            pass

    def log_metrics(self, run_id: str, values: dict[str, float | None], step: int = 0) -> None:
        """Log numeric `values` (None skipped) at `step` in one batch."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        self.client.log_batch(run_id, metrics=metrics)

    def logged_steps(self, run_id: str, metric: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, metric)}


def source_tags() -> dict[str, str]:
    """What the runs table shows as Source and Version: raynas, its version, the git commit."""
    from orchestrator import __version__

    tags = {
        "mlflow.source.name": "raynas",
        "mlflow.source.type": "LOCAL",
        "raynas.version": __version__,
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    """The commit of the raynas checkout in use, when it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
