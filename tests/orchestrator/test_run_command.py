"""`raynas run` / `search` / `export` as a user runs them, each in its own process with its own
local Ray: resuming a search whose driver was killed, and the one-line errors of bad input
(those commands are started two at a time by one fixture: each is mostly start-up on one core).
(No Ray runs in the test process here, so only the command's own cluster exists.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


def raynas_error(*args: str) -> subprocess.CompletedProcess:
    """A `raynas` command expected to fail early, in its own process group (ended with it)."""
    script = Path(sys.executable).with_name("raynas")
    process = subprocess.Popen(
        [str(script), *args],
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def unreachable_storage_case(work: Path) -> tuple[Path, int]:
    """A real (untrained) supernet checkpoint, so the search gets as far as opening the
    storage, and a PostgreSQL URL with a password where nothing listens."""
    space = build_space("vit", "vit-28", SMALL_SPACE)
    ckpt.save(work / "ckpt", space.build_supernet().state_dict(), {}, {})
    port = free_port()
    url = f"postgresql://raynas:hunter2-pw@127.0.0.1:{port}/nas"
    return write(work, tiny_run(work / "run", search={"storage": url})), port


@pytest.fixture(scope="module")
def error_runs(request, tmp_path_factory):
    """The one-line-error commands of this module's selected tests, each in its own folder,
    started two at a time (each is mostly the command's start-up on one core): name ->
    (folder, a future of its CompletedProcess, or of a tuple of them run in order)."""
    root = tmp_path_factory.mktemp("errors")

    def no_supernet(work: Path):
        return raynas_error("search", str(write(work, tiny_run(work / "run"))))

    def unreachable_storage(work: Path):
        config, port = unreachable_storage_case(work)
        (work / "port").write_text(str(port))
        return raynas_error("search", str(config), "--supernet", str(work / "ckpt"))

    def corrupt(work: Path):
        (work / "ckpt").mkdir()
        (work / "ckpt" / "supernet.pt").write_bytes(b"not torch")
        config = write(work, tiny_run(work / "run"))
        return raynas_error("search", str(config), "--supernet", str(work / "ckpt"))

    def export_and_resume(work: Path):
        run_dir = work / "run"
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(json.dumps(tiny_run(run_dir)))
        return raynas_error("export", str(run_dir)), raynas_error("run", "--resume", str(work))

    def different_config(work: Path):
        run_dir = work / "run"
        rundir.prepare(parse(tiny_run(run_dir), "test"))  # what a first `raynas run` leaves
        return raynas_error("run", str(write(work, tiny_run(run_dir, search={"budget": 99}))))

    jobs = {  # the slowest first
        "unreachable-storage": unreachable_storage,
        "no-supernet": no_supernet,
        "corrupt": corrupt,
        "export-and-resume": export_and_resume,
        "different-config": different_config,
    }
    assert set(jobs) == set(ERROR_RUN_OF.values())
    selected = {item.name for item in request.session.items if item.module is request.module}
    wanted = {name for test, name in ERROR_RUN_OF.items() if test in selected}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {}
        for name, job in jobs.items():
            if name in wanted:
                (root / name).mkdir()
                runs[name] = (root / name, pool.submit(job, root / name))
        yield runs
        for _, future in runs.values():
            future.cancel()


ERROR_RUN_OF = {  # test -> its run in `error_runs`
    "test_search_without_a_trained_supernet_is_one_line": "no-supernet",
    "test_unreachable_study_storage_is_one_line_before_ray": "unreachable-storage",
    "test_a_corrupt_supernet_checkpoint_is_one_line": "corrupt",
    "test_export_before_search_and_resume_of_a_non_run_are_one_line": "export-and-resume",
    "test_a_different_config_in_an_existing_run_dir_is_refused": "different-config",
}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_search_without_a_trained_supernet_is_one_line(error_runs):
    work, run = error_runs["no-supernet"]
    line = one_error_line(run.result())
    assert "needs the supernet of the supernet stage" in line and "--supernet" in line
    assert not (work / "run" / "study.db").exists()


def test_unreachable_study_storage_is_one_line_before_ray(error_runs):
    work, run = error_runs["unreachable-storage"]
    line = one_error_line(run.result())
    port = int((work / "port").read_text())
    assert "search.storage=" in line and "cannot open the Optuna storage" in line
    assert f"postgresql://raynas:***@127.0.0.1:{port}/nas" in line  # the password never shows
    assert "hunter2" not in line
    assert not (work / "run" / "archive.parquet").exists()
    for path in (work / "run").rglob("*"):  # nor is it written
        assert not path.is_file() or b"hunter2" not in path.read_bytes(), path


def test_a_corrupt_supernet_checkpoint_is_one_line(error_runs):
    _, run = error_runs["corrupt"]
    assert "is corrupt or not a torch file" in one_error_line(run.result())


def test_export_before_search_and_resume_of_a_non_run_are_one_line(error_runs):
    _, run = error_runs["export-and-resume"]
    export, resume = run.result()
    assert "needs the front of the search stage" in one_error_line(export)
    assert "no config.yaml there" in one_error_line(resume)


def test_a_different_config_in_an_existing_run_dir_is_refused(error_runs):
    work, run = error_runs["different-config"]
    line = one_error_line(run.result())
    assert "(search.budget differ)" in line and "--resume" in line
    assert sorted(p.name for p in (work / "run").iterdir()) == ["config.yaml"]  # untouched
