"""Runs a user can trust, without Ray: stage decisions, secrets, the run-dir lock, atomic
writes, damaged run-dir files, MLflow run statuses and changed params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator import rundir
from orchestrator.config import parse
from orchestrator.errors import ConfigError, Terminated, UserInputError
from orchestrator.files import write_text_atomic
from orchestrator.pipeline import config_for_resume, run_stages
from orchestrator.secrets import redact, resolve
from orchestrator.stage import Inputs, StageSpec, decide, read_result, stage_inputs
from orchestrator.stages import registered
from orchestrator.tracking import Tracker, flatten, tracking_uri
from tests.helpers.configs import tiny_run

RAYNAS = str(Path(sys.executable).with_name("raynas"))


def spec(**kw) -> StageSpec:
    return StageSpec(name="s", run=lambda ctx: {}, **kw)


# ------------------------------------------------------------------------------ stage decisions
def test_a_stage_is_skipped_continued_or_rerun_afresh_by_its_declared_inputs():
    search = registered()["search"]
    base = parse(tiny_run("/tmp/r"), "test")
    before = stage_inputs(search, base, {}).as_json()

    same = stage_inputs(search, base, {})
    assert decide(search, same, before, done=True).action == "skip"
    assert decide(search, same, before, done=False).action == "continue"  # interrupted

    more = parse(tiny_run("/tmp/r", search={"budget": 20}), "test")
    grown = decide(search, stage_inputs(search, more, {}), before, done=True)
    assert (grown.action, grown.reason) == ("continue", "search.budget 8 -> 20")

    fewer = parse(tiny_run("/tmp/r", search={"budget": 4}), "test")
    assert decide(search, stage_inputs(search, fewer, {}), before, done=True).action == "fresh"

    other = parse(tiny_run("/tmp/r", search={"strategy": "random"}), "test")
    changed = decide(search, stage_inputs(search, other, {}), before, done=True)
    assert (changed.action, changed.reason) == ("fresh", "search.strategy nsga2 -> random")

    # resources do not change what a search finds
    wider = parse(tiny_run("/tmp/r", search={"resources": {"workers": 1}}), "test")
    assert decide(search, stage_inputs(search, wider, {}), before, done=True).action == "skip"

    # a changed upstream output (another checkpoint) re-runs it afresh, and says so
    providers = {"supernet": ("supernet", {"digests": {"supernet": "abc"}})}
    newer = stage_inputs(search, base, providers)
    why = decide(search, newer, stage_inputs(search, base, {}).as_json(), done=True)
    assert (why.action, why.reason) == ("fresh", "the supernet changed")


def test_every_registered_stage_declares_what_it_reads_and_only_known_outputs():
    stages = registered()
    provided = {name for s in stages.values() for name in s.provides}
    for s in stages.values():
        assert s.reads, s.name
        assert set(s.needs + s.optional) <= provided, s.name
        assert set(s.ignores + s.extends) <= {
            k for k in s.ignores + s.extends if any(k.startswith(r) for r in s.reads)
        }, s.name


def test_fingerprints_ignore_the_run_directory_so_a_moved_run_is_the_same_run():
    search = registered()["search"]
    a = stage_inputs(search, parse(tiny_run("/tmp/a"), "test"), {})
    b = stage_inputs(search, parse(tiny_run("/elsewhere/b"), "test"), {})
    assert isinstance(a, Inputs) and a.fingerprint == b.fingerprint


# ------------------------------------------------------------------------------ secrets
def test_passwords_are_redacted_and_variables_expanded(monkeypatch):
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("http://h/x?token=abc&a=1") == "http://h/x?token=***&a=1"
    assert redact("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    # a reference to the environment is no secret: it is saved as written, so a resume works
    reference = "postgresql://u:${RAYNAS_TEST_PW}@h/db"
    assert redact(reference) == reference
    monkeypatch.setenv("RAYNAS_TEST_PW", "pw")
    assert resolve("postgresql://u:${RAYNAS_TEST_PW}@h/db", "search.storage") == (
        "postgresql://u:pw@h/db"
    )
    monkeypatch.delenv("RAYNAS_TEST_PW")
    with pytest.raises(UserInputError, match="RAYNAS_TEST_PW is not set"):
        resolve("postgresql://u:${RAYNAS_TEST_PW}@h/db", "search.storage")
    with pytest.raises(UserInputError, match="the password was not saved"):
        resolve("postgresql://u:***@h/db", "search.storage")


def test_config_yaml_and_mlflow_params_never_hold_a_password(tmp_path):
    data = tiny_run(tmp_path / "run", search={"storage": "postgresql://u:hunter2@127.0.0.1/db"})
    config = parse(data, "test")
    path = rundir.prepare(config)
    text = (path / "config.yaml").read_text()
    assert "hunter2" not in text and "postgresql://u:***@127.0.0.1/db" in text
    assert "hunter2" not in json.dumps(flatten(config.model_dump(mode="json")))
    # resuming from the redacted file asks for the password instead of using '***'
    resumed = config_for_resume(path)
    with pytest.raises(UserInputError, match="give the URL again with --set search.storage"):
        resolve(resumed.search.storage, "search.storage")


# ------------------------------------------------------------------------------ the run-dir lock
def test_a_second_driver_on_the_same_run_dir_is_one_line_naming_the_holder(tmp_path):
    data = tiny_run(tmp_path / "run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with rundir.lock(parse(data, "test")):
        done = subprocess.run(
            [RAYNAS, "run", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=240
        )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert f"pid {os.getpid()}" in errors[0] and "in use by another raynas driver" in errors[0]
    assert not (tmp_path / "run" / "supernet").exists()  # nothing was started
    with rundir.lock(parse(data, "test")):  # released by the holder: free again
        pass


def test_atomic_writes_use_unique_temporary_files_and_leave_none_behind(tmp_path):
    target = tmp_path / "f.json"
    write_text_atomic(target, "one")
    (tmp_path / "f.json.tmp").write_text("somebody else's temporary file")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert (tmp_path / "f.json.tmp").read_text() == "somebody else's temporary file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.json.tmp"]


# ------------------------------------------------------------------------------ damaged files
def test_a_damaged_config_or_tracking_file_in_a_run_dir_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="the saved config is damaged") as exc:
        config_for_resume(run)
    assert len(str(exc.value).splitlines()) == 1

    (run / "tracking.json").write_text("{not json")
    with pytest.raises(UserInputError, match="the MLflow run ids file is damaged") as exc:
        Tracker(tracking_uri(None, str(run)), "tests", str(run), "x")
    assert len(str(exc.value).splitlines()) == 1

    (run / "search").mkdir()
    (run / "search" / "result.json").write_text("[1, 2")
    with pytest.raises(UserInputError, match="search stage's result is damaged"):
        read_result(run, "search")


# ------------------------------------------------------------------------------ MLflow statuses
def test_a_stage_that_raises_ends_failed_and_sigterm_ends_killed(tmp_path):
    config = parse(tiny_run(tmp_path / "run"), "test")
    bad = {"checkpoint": str(tmp_path / "nowhere"), "checkpoint_sha256": "0", "adapter": None}
    with pytest.raises(UserInputError):
        run_stages(config, only=["search"], inputs={"supernet": bad})
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    client = MlflowClient(tracking_uri(None, str(tmp_path / "run")))
    assert client.get_run(state["stages"]["search"]).info.status == "FAILED"
    assert client.get_run(state["parent"]).info.status == "FAILED"
    assert read_result(tmp_path / "run", "search") is None  # nothing left as if complete

    tracker = Tracker(
        tracking_uri(None, str(tmp_path / "run")), "tests", str(tmp_path / "run"), "x"
    )
    run_id = tracker.stage_run("probe")
    with pytest.raises(Terminated), tracker.running(run_id):
        raise Terminated("received signal 15")
    assert client.get_run(run_id).info.status == "KILLED"
    with pytest.raises(KeyboardInterrupt), tracker.running(run_id):
        raise KeyboardInterrupt
    assert client.get_run(run_id).info.status == "KILLED"
    with tracker.running(run_id):
        pass
    assert client.get_run(run_id).info.status == "FINISHED"


def test_params_changed_on_resume_are_recorded_not_dropped(tmp_path):
    tracker = Tracker(tracking_uri(None, str(tmp_path)), "tests", str(tmp_path), "x")
    run_id = tracker.stage_run("search")
    assert tracker.log_params(run_id, {"search.budget": "8"}) == {}
    assert tracker.log_params(run_id, {"search.budget": "20"}) == {"search.budget": ("8", "20")}
    assert tracker.log_params(run_id, {"search.budget": "20"}) == {}
    tracker.log_params(run_id, {"search.budget": "30"})
    run = tracker.client.get_run(run_id)
    assert run.data.params["search.budget"] == "8"
    assert run.data.params["search.budget.resume_1"] == "20"
    assert run.data.params["search.budget.resume_2"] == "30"
    assert run.data.tags["raynas.changed_params"] == "search.budget"
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["mlflow.source.name"] == "raynas"
