"""`raynas train` as a user runs it, in its own process with its own local Ray: an unreachable
tracking server, resuming after the driver is killed, and what `-v` shows (on the runs of the
resume). (No Ray runs in the test process here, so only the command's own cluster exists.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.console import LOG_FILE
from orchestrator.stage import read_result
from tests.helpers.servers import free_port
from tests.orchestrator.test_supernet_stage import epochs_logged, make_config

pytestmark = pytest.mark.slow


def log_text(run_dir: Path) -> str:
    return (run_dir / LOG_FILE).read_text()


@contextlib.contextmanager
def starter():
    """Start `raynas` commands in their own process groups; kill what is left at the end."""
    started = []

    def start(*args, **kwargs) -> subprocess.Popen:
        script = Path(sys.executable).with_name("raynas")
        process = subprocess.Popen(
            [str(script), *args], text=True, start_new_session=True, **kwargs
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def raynas():
    with starter() as start:
        yield start


def test_unreachable_tracking_server_is_one_line_before_training(tmp_path, raynas):
    data = make_config(tmp_path / "run")
    data["tracking"] = {"uri": f"http://127.0.0.1:{free_port()}"}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))  # JSON is YAML
    process = raynas("train", str(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "MLflow server unreachable" in lines[0], stderr
    assert not (tmp_path / "run" / "supernet").exists()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """`raynas train -v` killed (SIGKILL, driver and its local Ray) after its first checkpoint,
    then the same command again, to completion: the resume and `-v`'s output are read from
    these two runs."""
    tmp_path = tmp_path_factory.mktemp("resume")
    data = make_config(tmp_path / "run", epochs=2)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))  # JSON is YAML
    with starter() as raynas, open(tmp_path / "first.log", "w") as log:
        first = raynas("train", str(path), "-v", stdout=log, stderr=subprocess.STDOUT)
        checkpoint = tmp_path / "run" / "supernet" / "epoch_0001" / "meta.json"
        deadline = time.monotonic() + 900
        while not checkpoint.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert checkpoint.exists(), (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1.0)  # let Ray register the checkpoint
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
        complete_after_kill = read_result(str(tmp_path / "run"), "supernet")
        second = raynas("train", str(path), "-v", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = second.communicate(timeout=600)
    first_output = (tmp_path / "first.log").read_text()
    return tmp_path, complete_after_kill, first_output, second.returncode, output


def test_resume_after_killing_the_driver(resumed):
    tmp_path, complete_after_kill, _, returncode, output = resumed
    assert complete_after_kill is None  # not complete
    assert returncode == 0, output[-3000:]
    assert "[supernet] epoch 1/2" not in output and "[supernet] epoch 2/2" in output
    result = read_result(str(tmp_path / "run"), "supernet")
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    assert epochs_logged(uri, result["mlflow_run_id"]) == [1, 2]


def test_verbose_train_shows_ray_and_mlflow_logs(resumed):
    """`-v` puts Ray's, Ray Train's and MLflow's logs on the console (and the log file)."""
    tmp_path, _, first_output, returncode, output = resumed
    # the first run created the MLflow store
    assert "Creating initial MLflow database tables" in first_output
    assert returncode == 0, output[-3000:]
    assert "(TrainController pid=" in output and "Started training worker group" in output
    assert "[supernet] epoch 2/2" in output  # the worker's line, as Ray prints it
    assert "Creating initial MLflow database tables" in log_text(tmp_path / "run")
