"""PostgreSQL for real: the Optuna study and MLflow's backend store on a PostgreSQL server
(tests/helpers/postgres.py), two `raynas search` drivers sharing one study's budget, and a
search that survives the database restarting under it. The searches score NAS-Bench-201 cells
from the table (no data, no supernet), each `raynas search` in its own process with its own
Ray (what costs the time here: starting them); `raynas report` runs in this process."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.search.searcher import DRIVER_ATTR, is_claim, undecided
from orchestrator.search.storage import RetryingRDBStorage
from orchestrator.secrets import redact
from orchestrator.stages.search import StudyStorageError
from search_spaces import build_space
from tests.helpers.postgres import pg_bin, postgres, postgres_server  # noqa: F401 (fixture)
from tests.helpers.servers import mlflow_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (make test)"),
]
optuna.logging.set_verbosity(optuna.logging.WARNING)

RAYNAS = str(Path(sys.executable).with_name("raynas"))
CELL = {"channels": 4, "cells_per_stage": 1}
BUDGET = 10


def table_search(run_dir: Path, name: str, storage: str, **search) -> dict:
    """A search of NAS-Bench-201 cells scored by the table, then its report."""
    return {
        "name": name,
        "method": "it-nas",
        "run_dir": str(run_dir),
        "stages": ["search", "report"],
        "data": {"name": "fashion_mnist", "download": False, "subset": {"val": 256}},
        "space": {"preset": "nb201-28", "overrides": dict(CELL)},
        "search": {
            # runner tune: Ray Tune's pace (about 0.1 s a trial) leaves time to pause a
            # driver mid-search; the in-process loop would finish the budget first
            "evaluator": "table", "runner": "tune", "strategy": "nsga2", "budget": BUDGET,
            "storage": storage,
            "evolution": {"population": 4, "parents": 2, "mutations": 1, "crossovers": 1},
            "resources": {"workers": 1, "cpus_per_worker": 1}, **search,
        },
        "tracking": {"experiment": "postgres"},
    }  # fmt: skip


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`raynas ...` in its own process group, its output into `log` (never a full pipe)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [RAYNAS, *args], stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip


def finish(process: subprocess.Popen, log: Path, timeout: float) -> str:
    process.wait(timeout=timeout)
    output = log.read_text()
    assert process.returncode == 0, output[-4000:]
    return output


def end(processes) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def pause(pid: int) -> None:
    """SIGSTOP the driver and return once it is stopped."""
    os.kill(pid, signal.SIGSTOP)
    while not stopped(pid):
        time.sleep(0.01)


def poll(what, check, processes, timeout: float, logs=()):
    """`what()` until `check` accepts it; fails when a process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if check(value):
            return value
        for process, log in zip(processes, logs or [None] * len(processes), strict=True):
            tail = log.read_text()[-3000:] if log is not None else ""
            assert process.poll() is None, (
                f"a driver ended first (rc {process.returncode}):\n{tail}"
            )
        assert time.monotonic() < deadline, f"timed out waiting; last value: {value!r}"
        time.sleep(0.1)


class Study:
    """The study as a third party sees it, read afresh at each call."""

    def __init__(self, url: str, name: str) -> None:
        self.storage = optuna.storages.RDBStorage(url)
        self.name = name

    def trials(self) -> list:
        try:
            study = optuna.load_study(study_name=self.name, storage=self.storage)
        except KeyError:  # not created yet
            return []
        return study.get_trials(deepcopy=False)


def run_of(trial) -> str | None:
    """The run directory name of the driver that asked for `trial`."""
    driver = trial.user_attrs.get(DRIVER_ATTR)
    return Path(driver["run_dir"]).name if driver else None


def evaluated(trials) -> list:
    return [t for t in trials if is_claim(t) and t.state == TrialState.COMPLETE]


def archive(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "archive.parquet").to_pylist()


# ------------------------------------------------------------------------- the storage alone
def test_the_storage_waits_out_a_restart_then_gives_up_in_one_line():
    with postgres_server() as pg:
        lines: list[str] = []
        outage = threading.Event()

        def notify(line: str) -> None:
            lines.append(line)
            if "not answering" in line:
                outage.set()

        storage = RetryingRDBStorage(pg.url(), notify=notify)
        study = optuna.create_study(study_name="s", storage=storage)
        study.set_user_attr("before", 1)
        pg.stop()
        restart = threading.Thread(target=lambda: outage.wait(60) and pg.start())
        restart.start()
        study.set_user_attr("after", 2)  # waits until the server is back
        restart.join()
        assert pg.running
        shown = f"postgresql+psycopg2://raynas:***@127.0.0.1:{pg.port}/raynas"
        assert len(lines) == 2, lines
        assert lines[0].startswith(f"[storage] {shown} is not answering (OperationalError: ")
        assert "retrying for up to 60 s" in lines[0] and "is answering again" in lines[1]
        again = optuna.load_study(study_name="s", storage=pg.url())
        assert again.user_attrs == {"before": 1, "after": 2}

        storage.retry_seconds = 1.5  # a database that stays away: one line, no password
        pg.stop()
        started = time.monotonic()
        with pytest.raises(StudyStorageError) as raised:
            study.set_user_attr("never", 3)
        assert time.monotonic() - started < 30
        message = str(raised.value)
        assert message.startswith(f"search.storage={shown!r}: the database did not answer for")
        assert "\n" not in message and pg.password not in message
        assert redact(pg.url()) == shown


# ---------------------------------------------------- two drivers, one study, one budget
@pytest.fixture(scope="module")
def shared(postgres, tmp_path_factory):  # noqa: F811
    """Two `raynas search` drivers started at once, each with its own run directory, on one
    study in PostgreSQL (password from $PGPASSWORD) and one MLflow server whose backend store is
    PostgreSQL; then `raynas report` in each run directory. The study starts with the largest
    and the smallest cell enqueued twice each, as two drivers racing through their first
    `enqueue_extremes` leave it. The first driver to have 2 candidates evaluated is paused
    (SIGSTOP, at a moment it is between database calls) until the other has claimed one, so
    both take part whatever their start-up times."""
    root = tmp_path_factory.mktemp("shared")
    url = postgres.url(password="${PGPASSWORD}")
    env = {**os.environ, "PGPASSWORD": postgres.password}
    space = build_space("cell", "nb201-28", CELL)
    seeded = optuna.create_study(
        study_name="shared", storage=postgres.url(), directions=["maximize", "minimize"]
    )
    for arch in (space.largest(), space.smallest(), space.largest(), space.smallest()):
        seeded.enqueue_trial(space.encode(arch))
    runs = {name: root / f"run-{name}" for name in ("a", "b")}
    processes: list[subprocess.Popen] = []
    with mlflow_server(root, backend=postgres.url("mlflow")) as uri:
        try:
            configs, logs = {}, {}
            for name, run_dir in runs.items():
                data = table_search(run_dir, "shared", url)
                data["tracking"] = {"uri": uri, "experiment": "shared"}
                configs[name] = root / f"{name}.yaml"
                configs[name].write_text(json.dumps(data))  # JSON is YAML
                logs[name] = root / f"search-{name}.log"
            drivers = {
                name: start(["search", str(configs[name])], logs[name], env) for name in runs
            }
            processes += drivers.values()
            study = Study(postgres.url(), "shared")
            order = list(drivers)
            waits = [logs[n] for n in order]

            def ahead(trials):
                done = collections.Counter(run_of(t) for t in evaluated(trials))
                return next((n for n in order if done[f"run-{n}"] >= 2), None)

            first = poll(lambda: ahead(study.trials()), bool, processes, 420, waits)
            other = next(n for n in order if n != first)
            pid = drivers[first].pid
            while True:  # stop it between database calls, with no trial half-decided
                pause(pid)
                busy = [
                    t
                    for t in study.trials()
                    if undecided(t) and run_of(t) in (None, f"run-{first}")
                ]
                open_tx = postgres.psql(
                    "raynas",
                    "select count(*) from pg_stat_activity where datname = 'raynas' "
                    "and state like 'idle in transaction%'",
                ).strip()
                if not busy and open_tx == "0":
                    break
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.05)
            paused_with = len([t for t in evaluated(study.trials()) if run_of(t) == f"run-{first}"])
            poll(
                study.trials,
                lambda ts: any(is_claim(t) and run_of(t) == f"run-{other}" for t in ts),
                [drivers[other]],
                420,
                [logs[other]],
            )
            os.kill(pid, signal.SIGCONT)
            outputs = {name: finish(drivers[name], logs[name], 420) for name in order}
            report_out = {}
            for name, run_dir in runs.items():  # `raynas report RUN_DIR`, in this process
                done = CliRunner().invoke(app, ["report", str(run_dir)], env=env)
                assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
                report_out[name] = done.output
        finally:
            end(processes)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("shared")
        mlflow_runs = client.search_runs([experiment.experiment_id]) if experiment else []
    yield {
        "root": root,
        "runs": runs,
        "outputs": outputs,
        "reports": report_out,
        "trials": Study(postgres.url(), "shared").trials(),
        "first": first,
        "paused_with": paused_with,
        "mlflow_runs": mlflow_runs,
        "space": space,
    }


def test_two_drivers_evaluate_the_budget_together_each_arch_once(shared):
    rows = {name: archive(run_dir) for name, run_dir in shared["runs"].items()}
    ids = {name: {r["arch_id"] for r in got} for name, got in rows.items()}
    assert all(len(ids[n]) == len(rows[n]) >= 1 for n in rows), ids  # both took part
    assert not ids["a"] & ids["b"] and len(ids["a"] | ids["b"]) == BUDGET
    trials = shared["trials"]
    done = evaluated(trials)
    assert len(done) == BUDGET and len({t.user_attrs["arch_id"] for t in done}) == BUDGET
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for name, got in rows.items():  # each archive holds exactly what its own driver evaluated
        mine = {t.number: t.user_attrs["arch_id"] for t in done if run_of(t) == f"run-{name}"}
        assert {r["trial"]: r["arch_id"] for r in got} == mine
    space = shared["space"]
    extremes = {space.arch_id(space.largest()), space.arch_id(space.smallest())}
    assert extremes <= ids["a"] | ids["b"]
    # the second copies of the enqueued extremes were not evaluated again
    copies = [t for t in trials if t.number in (2, 3)]
    assert all(t.user_attrs.get("arch_id") in extremes for t in copies)
    assert all(("claimed_by" in t.user_attrs) != ("duplicate_of" in t.user_attrs) for t in copies)
    # the paused driver had 2 when the other one joined, and both went on from there
    assert shared["paused_with"] >= 2
    for name, output in shared["outputs"].items():
        assert f"{len(rows[name])} candidates evaluated" in output


def test_the_study_and_the_mlflow_runs_are_in_postgres(shared, postgres):  # noqa: F811
    names = {t.user_attrs.get(DRIVER_ATTR, {}).get("host") for t in evaluated(shared["trials"])}
    assert names == {socket.gethostname()}
    runs = shared["mlflow_runs"]
    # each driver: a parent run and the search's nested run; each report: its nested run
    by_dir = collections.Counter(r.data.tags.get("mlflow.runName", "") for r in runs)
    assert len(runs) >= 4, by_dir
    count = int(postgres.psql("mlflow", "select count(*) from runs").strip())
    assert count == len(runs)  # MLflow's backend store is this PostgreSQL database
    logged = postgres.psql("mlflow", "select count(*) from metrics where key = 'val_top1'")
    assert int(logged.strip()) == BUDGET  # every candidate, by the driver that evaluated it


def test_the_password_is_written_nowhere(shared, postgres):  # noqa: F811
    secret = postgres.password.encode()
    hits = [
        p
        for root in (*shared["runs"].values(), shared["root"] / "artifacts")
        for p in root.rglob("*")
        if p.is_file() and secret in p.read_bytes()
    ]
    assert hits == []
    for output in (*shared["outputs"].values(), *shared["reports"].values()):
        assert postgres.password not in output
    for run_dir in shared["runs"].values():
        assert "${PGPASSWORD}" in (run_dir / "config.yaml").read_text()
    assert all(postgres.password not in json.dumps(r.data.params) for r in shared["mlflow_runs"])


def test_the_report_of_either_run_shows_the_whole_study(shared):
    host = socket.gethostname()
    rows = {name: archive(run_dir) for name, run_dir in shared["runs"].items()}
    for name, run_dir in shared["runs"].items():
        text = (run_dir / "report.md").read_text()
        assert (
            f"{len(rows[name])} candidates evaluated of a budget of {BUDGET} by this driver, "
            in text
        )
        section = text[text.index("## Study `shared` (every driver)") :]
        assert (
            f"{BUDGET} candidates evaluated in the study (budget {BUDGET}) by 2 driver(s)"
            in section
        )
        for other, got in rows.items():
            label = f"{host}:{shared['runs'][other]}"
            mark = " (this run)" if other == name else ""
            assert f"| {label}{mark} | {len(got)} | 0 |" in section
            for row in got:  # every candidate of both drivers, with its driver
                who = "this run" if other == name else label
                assert f"| {row['trial']} | {row['arch_id']} | {row['val_top1']:.2f} |" in section
                assert f"{row['flops'] / 1e6:.2f} | {who} |" in section


# ------------------------------------------------------------------- a database restart
def test_a_search_survives_a_postgres_restart(tmp_path):
    with postgres_server() as pg:
        run_dir = tmp_path / "run"
        config = tmp_path / "cfg.yaml"
        data = table_search(run_dir, "restart", pg.url(password="${PGPASSWORD}"))
        config.write_text(json.dumps(data))
        env = {**os.environ, "PGPASSWORD": pg.password}
        log = tmp_path / "search.log"
        driver = start(["search", str(config)], log, env)
        try:
            study = Study(pg.url(), "restart")
            poll(lambda: len(evaluated(study.trials())), lambda n: n >= 3, [driver], 420, [log])
            pause(driver.pid)  # mid-search: the search cannot end while the server is down
            before = len(evaluated(study.trials()))
            study.storage.engine.dispose()  # our own connections go with the server
            pg.stop()
            os.kill(driver.pid, signal.SIGCONT)
            poll(lambda: log.read_text(), lambda text: "is not answering" in text, [driver], 120)
            pg.start()
            output = finish(driver, log, 300)
        finally:
            end([driver])
        assert before < BUDGET
        assert "retrying for up to 60 s" in output and "is answering again, after" in output
        assert pg.password not in output
        rows = archive(run_dir)
        assert len(rows) == BUDGET and len({r["arch_id"] for r in rows}) == BUDGET
        trials = Study(pg.url(), "restart").trials()
        done = evaluated(trials)
        assert sorted(t.number for t in done) == sorted(r["trial"] for r in rows)  # none lost
        assert not [t for t in trials if t.state == TrialState.RUNNING]
