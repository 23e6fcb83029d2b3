"""`raynas run` in its own process: a password in the tracking URL is written nowhere; SIGTERM
ends the MLflow runs KILLED. (What a resume re-runs is tested on test_pipeline.py's run.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.stage import read_result
from orchestrator.tracking import tracking_uri
from tests.helpers.configs import tiny_run
from tests.helpers.servers import mlflow_server

RAYNAS = str(Path(sys.executable).with_name("raynas"))


@pytest.mark.slow
def test_a_password_in_the_tracking_url_is_written_nowhere(tmp_path):
    secret = "pw-7f3a9c"
    with mlflow_server(tmp_path) as uri:
        authed = uri.replace("http://", f"http://raynas:{secret}@")
        data = tiny_run(
            tmp_path / "run",
            search={"budget": 4, "storage": "${RAYNAS_TEST_STORAGE}"},
            tracking={"uri": authed, "experiment": "secrets"},
        )
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "c.yaml").write_text(yaml.safe_dump(data))
        env = {**os.environ, "RAYNAS_TEST_STORAGE": f"sqlite:///{tmp_path / 'run' / 'study.db'}"}
        done = subprocess.run(
            [RAYNAS, "run", str(tmp_path / "cfg" / "c.yaml")],
            capture_output=True,
            text=True,
            timeout=480,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert secret not in done.stdout + done.stderr
        assert "raynas:***@" in (tmp_path / "run" / "config.yaml").read_text()
        assert "${RAYNAS_TEST_STORAGE}" in (tmp_path / "run" / "config.yaml").read_text()
        hits = [
            p
            for root in (tmp_path / "run", tmp_path / "artifacts", tmp_path / "server.db")
            for p in ([root] if root.is_file() else root.rglob("*"))
            if p.is_file() and secret.encode() in p.read_bytes()
        ]
        assert hits == []
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
        assert runs and all(secret not in json.dumps(r.data.params) for r in runs)


@pytest.mark.slow
def test_sigterm_ends_the_stage_and_parent_runs_killed(tmp_path):
    # 5 epochs: SIGTERM arrives with 4 to go (the driver reacts once Ray Train's fit() returns)
    data = tiny_run(tmp_path / "run", supernet={"epochs": 5})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [RAYNAS, "run", str(tmp_path / "c.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:  # the first epoch line: training is under way
        if "[supernet] epoch 1/5" in line:
            break
    else:
        pytest.fail("the run ended before its first epoch")
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 143, rest[-2000:]
    assert "stopped by SIGTERM" in rest
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    client = MlflowClient(tracking_uri(None, str(tmp_path / "run")))
    assert client.get_run(state["stages"]["supernet"]).info.status == "KILLED"
    assert client.get_run(state["parent"]).info.status == "KILLED"
    assert read_result(tmp_path / "run", "supernet") is None
