"""What `raynas run` / `train` print: raynas's progress and tables on the console; Ray's, Ray
Train's, MLflow's and torch's logs in RUN_DIR/raynas.log, and on the console with `-v` (the
subprocess check of `-v` rides on test_train_command.py's resume runs)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import warnings
from pathlib import Path

import pytest

import orchestrator.console
from orchestrator import console
from tests.helpers.configs import tiny_run
from tests.orchestrator.test_train_command import raynas  # noqa: F401  (fixture)

NOISE = ("TrainingReport(", "Reporting training result", "find_unused_parameters", "alembic")
DDP = (
    "[rank1]:[W1202 03:03:59.498308971 reducer.cpp:1529] Warning: find_unused_parameters=True "
    "was specified in DDP constructor, but did not find any unused parameters in the forward pass."
)


@pytest.fixture
def routed():
    """`setup_logging` in this process, undone afterwards."""
    yield console.setup_logging
    console.reset()


def log_text(run_dir: Path) -> str:
    return (run_dir / console.LOG_FILE).read_text()


# ---------------------------------------------------------------------------------- in-process
def test_the_log_file_waits_for_the_run_directory(tmp_path, routed, capsys):
    run_dir = tmp_path / "run"
    routed(run_dir, verbose=False)
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    assert not run_dir.exists()  # a command that fails before creating it leaves nothing
    run_dir.mkdir()
    logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 451aebb31d03")
    logging.getLogger("orchestrator.stages.search").warning("3 trials failed")
    text = log_text(run_dir)
    assert "Creating initial MLflow database tables" in text and "Running upgrade" in text
    err = capsys.readouterr().err
    assert "3 trials failed" in err  # raynas's own warning is shown
    assert "MLflow" not in err and "upgrade" not in err


def test_raynas_user_warnings_show_library_warnings_go_to_the_log(tmp_path, routed, capsys):
    routed(tmp_path, verbose=False)
    own = Path(orchestrator.console.__file__)
    library = Path(logging.__file__)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("data.root is slow", UserWarning, str(own), 1)
        warnings.warn_explicit("TypedStorage is deprecated", UserWarning, str(library), 1)
    err = capsys.readouterr().err
    assert "data.root is slow" in err and "TypedStorage" not in err
    text = log_text(tmp_path)
    assert "data.root is slow" in text and "TypedStorage is deprecated" in text


def test_worker_output_quietly_and_verbosely(tmp_path, routed, capsys):
    def batch(lines, **data):
        return {"pid": 3893, "actor_name": "RayTrainWorker", "ip": "10.0.0.1",
                "localhost": "10.0.0.1", "is_err": False, "lines": lines, **data}  # fmt: skip

    epoch = "[supernet] epoch 1/2  loss 2.2381  2076 img/s  val top-1: smallest 13.5"
    report = "Reporting training result 1: TrainingReport(checkpoint=None, metrics={}) from rank 1"
    own_warning = "/srv/app/trainables/data/sources.py:88: UserWarning: 3 images unreadable"
    failure = [
        "[FailurePolicy] RETRY",
        "  Source: worker group",
        "  Error count: 1 (max allowed: 2)",
        "Traceback (most recent call last):",
        '  File "/work/main/trainables/train/loop.py", line 204, in train_worker',
        "trainables.train.loop.InjectedFailure: injected failure at epoch 2",
    ]
    routed(tmp_path, verbose=False)
    output = console._WorkerOutput(quiet=True)
    output(batch([epoch, report]))
    output(batch([DDP, own_warning], is_err=True))
    output(batch(failure, pid=3757, actor_name="TrainController", is_err=True))
    output(batch(["[2026-12-02] A worker died"], pid="raylet", actor_name=None))
    captured = capsys.readouterr()
    assert captured.out == epoch + "\n"  # without Ray's `(RayTrainWorker pid=...)` prefix
    assert own_warning in captured.err and "A worker died" in captured.err
    assert "find_unused_parameters" not in captured.err and "Reporting" not in captured.err
    summary = [line for line in captured.err.splitlines() if "Ray Train worker failed" in line]
    assert len(summary) == 1 and "InjectedFailure: injected failure at epoch 2" in summary[0]
    assert "retry, error count 1 (max allowed: 2)" in summary[0] and "raynas.log" in summary[0]
    text = log_text(tmp_path)
    for line in (epoch, report, DDP, own_warning, *failure[:1], "[2026-12-02] A worker died"):
        assert f") {line}" in text
    assert "(RayTrainWorker pid=3893) " + epoch in text

    routed(tmp_path, verbose=True)  # Ray prints the worker lines itself; the log gets a copy
    console._WorkerOutput(quiet=False)(batch([report]))
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    captured = capsys.readouterr()
    assert captured.out == "" and "Context impl SQLiteImpl." in captured.err
    assert log_text(tmp_path).count(report) == 2


# ---------------------------------------------------------------------------------- commands
def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


@pytest.mark.slow
def test_run_prints_progress_and_the_table_and_logs_the_rest(tmp_path, raynas):  # noqa: F811
    run_dir = tmp_path / "run"
    data = tiny_run(run_dir, supernet={"epochs": 2}, search={"budget": 4})
    process = raynas(
        "run", str(write(tmp_path, data)), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr[-3000:]
    console_text = stdout + stderr
    for noise in (*NOISE, "pid=", "INFO", "Configuration for experiment", "Token authentication"):
        assert noise not in console_text, noise
    epochs = [line for line in stdout.splitlines() if line.startswith("[supernet] epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"]  # one line per epoch, once
    assert len([line for line in stdout.splitlines() if re.match(r"\[search\] \d+/4 ", line)]) == 4
    assert "Pareto subnets" in stdout and f"run directory: {run_dir}" in stdout
    assert stderr == ""
    text = log_text(run_dir)
    for suppressed in (
        "INFO mlflow.store.db.utils: Creating initial MLflow database tables",
        "INFO alembic.runtime.migration: Running upgrade",
        "(TrainController pid=",
        "Started training worker group of size 2",
        "find_unused_parameters=True",
        "Started a local Ray instance",
    ):
        assert suppressed in text, suppressed
    assert "(RayTrainWorker pid=" in text and "[supernet] epoch 2/2" in text
