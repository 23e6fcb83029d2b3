"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

The default store is an embedded SQLite file in the run directory, with its artifacts in
`<run>/mlartifacts`; any `http(s)://` tracking server works. Run ids live in
`<run>/tracking.json`, so a resumed stage logs into the run it started. Training metrics reach
MLflow from rank 0 only, through a Ray Train callback in the Train controller (see
`stages/supernet.py`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic

TRACKING_FILE = "tracking.json"
ARTIFACTS_DIR = "mlartifacts"  # the embedded store's artifacts, beside <run>/mlflow.db
REACH_TIMEOUT_S = 5.0


class TrackingError(UserInputError):
    """The tracking server cannot be reached or used."""


def tracking_uri(configured: str | None, run_dir: str) -> str:
    if configured is not None:
        return configured
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def check_reachable(uri: str) -> None:
    """Fail before any work starts when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=REACH_TIMEOUT_S) as response:
            if response.status != 200:
                raise TrackingError(
                    f"tracking.uri={uri}: {url} answered HTTP {response.status}, not 200"
                )
    except urllib.error.HTTPError as exc:
        raise TrackingError(
            f"tracking.uri={uri}: {url} answered HTTP {exc.code}; is this an MLflow server?"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"tracking.uri={uri}: MLflow server unreachable ({reason}); start one with `mlflow server`, "
            "or set tracking.uri: null for the embedded store in the run directory"
        ) from None


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} for MLflow params (values as strings, max 6000 chars)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix.rstrip(".")] = str(data)[:6000]
    return out


class Tracker:
    """The MLflow runs of one run directory."""

    def __init__(self, uri: str, experiment: str, run_dir: str, run_name: str) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        check_reachable(uri)
        self.uri = uri
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id
                if found
                else self.client.create_experiment(
                    experiment, artifact_location=self._artifact_location()
                )
            )
        except Exception as exc:  # any store/server failure here is a setup problem of the user's
            raise TrackingError(
                f"tracking.uri={uri}: cannot open experiment {experiment!r}: {exc}"
            ) from None
        self.state = self._read_state()
        if "parent" not in self.state:
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={"raynas.run_dir": str(self.run_dir.resolve())},
            )
            self.state = {"parent": run.info.run_id, "stages": {}}
            self._write_state()

    def _artifact_location(self) -> str | None:
        """The embedded store keeps its artifacts in the run directory too; MLflow's default,
        `./mlruns` under the current directory, is a throwaway copy under `ray job submit`."""
        if self.uri != tracking_uri(None, str(self.run_dir)):
            return None  # a server or a shared store decides
        return (self.run_dir.resolve() / ARTIFACTS_DIR).as_uri()

    @property
    def parent_run_id(self) -> str:
        return self.state["parent"]

    def _read_state(self) -> dict[str, Any]:
        path = self.run_dir / TRACKING_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / TRACKING_FILE, self.state)

    def stage_run(self, stage: str) -> str:
        """The nested run of `stage` (created once, reopened on resume)."""
        run_id = self.state["stages"].get(stage)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=stage,
                tags={"mlflow.parentRunId": self.parent_run_id, "raynas.stage": stage},
            )
            run_id = run.info.run_id
            self.state["stages"][stage] = run_id
            self._write_state()
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.client.update_run(self.parent_run_id, status="RUNNING")
        return run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100])

    def log_metrics(self, run_id: str, values: dict[str, float | None], step: int = 0) -> None:
        """Log numeric `values` (None skipped) at `step` in one batch."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        self.client.log_batch(run_id, metrics=metrics)

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def logged_steps(self, run_id: str, metric: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, metric)}
