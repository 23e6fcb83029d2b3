"""`raynas run` / `search` / `export` as a user runs them, each in its own process with its own
local Ray: resuming a search whose driver was killed, and the one-line errors of bad input.
(No Ray runs in the test process here, so only the command's own cluster exists.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from orchestrator import rundir
from orchestrator.config import parse
from orchestrator.stage import read_result
from search_spaces import build_space
from tests.helpers.configs import SMALL_SPACE, tiny_run
from tests.helpers.servers import free_port
from tests.orchestrator.test_train_command import raynas  # noqa: F401  (fixture)
from trainables.train import checkpoint as ckpt

pytestmark = pytest.mark.slow


def write(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def archive_size(run_dir: Path) -> int:
    path = run_dir / "archive.parquet"
    try:
        return pq.read_metadata(path).num_rows if path.exists() else 0
    except OSError:
        return 0


def test_resume_after_killing_the_search_evaluates_each_arch_once(tmp_path, raynas):  # noqa: F811
    run_dir = tmp_path / "run"
    data = tiny_run(run_dir, search={"budget": 14, "resources": {"workers": 1}})
    config = write(tmp_path, data)
    process = raynas("run", str(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 420
    while archive_size(run_dir) < 4:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "the search did not get going"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started
    process.wait()
    interrupted = archive_size(run_dir)
    assert 4 <= interrupted < 14 and read_result(str(run_dir), "search") is None

    resumed = raynas(
        "run", "--resume", str(run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = resumed.communicate(timeout=480)
    assert resumed.returncode == 0, output[-3000:]
    assert "[supernet] up to date; skipping" in output
    rows = pq.read_table(run_dir / "archive.parquet").to_pylist()
    assert len(rows) == 14 and len({r["arch_id"] for r in rows}) == 14
    outcome = read_result(str(run_dir), "search")
    assert outcome["evaluated"] == 14
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    complete = [
        t
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if "duplicate_of" not in t.user_attrs
    ]
    assert sorted(t.number for t in complete) == sorted(r["trial"] for r in rows)
    # only what was left was evaluated after the resume
    assert f"{14 - interrupted} of 14 candidates to evaluate" in output
    assert (run_dir / "report.md").exists() and "Pareto subnets" in output


def one_error_line(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 1, stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_search_without_a_trained_supernet_is_one_line(tmp_path, raynas):  # noqa: F811
    config = write(tmp_path, tiny_run(tmp_path / "run"))
    line = one_error_line(raynas("search", str(config), stderr=subprocess.PIPE))
    assert "needs the supernet of the supernet stage" in line and "--supernet" in line
    assert not (tmp_path / "run" / "study.db").exists()


def test_unreachable_study_storage_is_one_line_before_ray(tmp_path, raynas):  # noqa: F811
    # a real (untrained) supernet checkpoint, so the search gets as far as opening the storage
    space = build_space("vit", "vit-28", SMALL_SPACE)
    ckpt.save(tmp_path / "ckpt", space.build_supernet().state_dict(), {}, {})
    port = free_port()
    url = f"postgresql://raynas:hunter2-pw@127.0.0.1:{port}/nas"
    config = write(tmp_path, tiny_run(tmp_path / "run", search={"storage": url}))
    process = raynas(
        "search",
        str(config),
        "--supernet",
        str(tmp_path / "ckpt"),
        stderr=subprocess.PIPE,
    )
    line = one_error_line(process)
    assert "search.storage=" in line and "cannot open the Optuna storage" in line
    assert f"postgresql://raynas:***@127.0.0.1:{port}/nas" in line  # the password never shows
    assert "hunter2" not in line
    assert not (tmp_path / "run" / "archive.parquet").exists()
    for path in (tmp_path / "run").rglob("*"):  # nor is it written
        assert not path.is_file() or b"hunter2" not in path.read_bytes(), path


def test_a_corrupt_supernet_checkpoint_is_one_line(tmp_path, raynas):  # noqa: F811
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "supernet.pt").write_bytes(b"not torch")
    config = write(tmp_path, tiny_run(tmp_path / "run"))
    process = raynas(
        "search",
        str(config),
        "--supernet",
        str(tmp_path / "ckpt"),
        stderr=subprocess.PIPE,
    )
    assert "is corrupt or not a torch file" in one_error_line(process)


def test_export_before_search_and_resume_of_a_non_run_are_one_line(tmp_path, raynas):  # noqa: F811
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(json.dumps(tiny_run(run_dir)))
    line = one_error_line(raynas("export", str(run_dir), stderr=subprocess.PIPE))
    assert "needs the front of the search stage" in line
    line = one_error_line(raynas("run", "--resume", str(tmp_path), stderr=subprocess.PIPE))
    assert "no config.yaml there" in line


def test_a_different_config_in_an_existing_run_dir_is_refused(tmp_path, raynas):  # noqa: F811
    run_dir = tmp_path / "run"
    rundir.prepare(parse(tiny_run(run_dir), "test"))  # what a first `raynas run` leaves
    changed = write(tmp_path, tiny_run(run_dir, search={"budget": 99}))
    line = one_error_line(raynas("run", str(changed), stderr=subprocess.PIPE))
    assert "(search.budget differ)" in line and "--resume" in line
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]  # untouched
