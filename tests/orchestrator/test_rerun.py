"""Resume re-runs exactly what its changed inputs reach, from a copied run directory too; a
password in the tracking URL is written nowhere; SIGTERM ends the MLflow runs KILLED."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config import parse
from orchestrator.pipeline import config_for_resume, run_pipeline
from orchestrator.stage import read_result
from orchestrator.tracking import tracking_uri
from tests.helpers.configs import tiny_run
from tests.helpers.servers import local_ray, mlflow_server

RAYNAS = str(Path(sys.executable).with_name("raynas"))


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray():
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_cluster):
    run_dir = tmp_path_factory.mktemp("rerun") / "run"
    config = parse(tiny_run(run_dir), "test")
    return config, run_pipeline(config)


def copy_of(config, tmp_path) -> Path:
    """The finished run directory copied elsewhere (the original is then moved away)."""
    copy = tmp_path / "copy"
    shutil.copytree(config.run_path, copy)
    return copy


def test_a_larger_budget_continues_the_search_and_reruns_what_it_reaches(
    finished, tmp_path, capsys
):
    config, outcomes = finished
    copy = copy_of(config, tmp_path)
    capsys.readouterr()
    again = run_pipeline(config_for_resume(copy, ["search.budget=12"]))
    out = capsys.readouterr().out
    assert "[supernet] up to date; skipping" in out
    assert "[search] re-run, search.budget 8 -> 12" in out
    assert "4 of 12 candidates to evaluate" in out  # the copy continued its own archive
    rows = pq.read_table(copy / "archive.parquet").to_pylist()
    assert len(rows) == 12 and len({r["arch_id"] for r in rows}) == 12
    assert {r["scored_by"] for r in rows} == {outcomes["supernet"]["checkpoint_sha256"]}
    assert len(pq.read_table(Path(config.run_path) / "archive.parquet")) == 8  # untouched
    front_changed = again["search"]["front"] != outcomes["search"]["front"]
    assert ("[export] re-run, the front changed" in out) == front_changed
    report = (copy / "report.md").read_text()
    for model in again["export"]["models"]:
        assert model["arch_id"] in report
        assert (copy / model["path"] / "model.safetensors").exists()  # paths inside the copy
    assert "12 candidates evaluated of a budget of 12" in report
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{copy / 'study.db'}")
    assert len({t.user_attrs.get("arch_id") for t in study.trials} - {None}) >= 12


def test_more_supernet_epochs_retrain_and_start_a_fresh_study(finished, tmp_path, capsys):
    config, outcomes = finished
    copy = copy_of(config, tmp_path)
    capsys.readouterr()
    again = run_pipeline(config_for_resume(copy, ["supernet.epochs=2"]))
    out = capsys.readouterr().out
    assert "[supernet] re-run, supernet.epochs 1 -> 2" in out
    assert "[search] re-run, the supernet changed" in out
    assert again["supernet"]["epochs"] == 2
    assert again["search"]["checkpoint"] == "supernet/epoch_0002"
    # never continued over another checkpoint: a new study, the old archive moved aside
    assert again["search"]["study"] != outcomes["search"]["study"]
    assert again["search"]["study"].startswith("tiny-")
    rows = pq.read_table(copy / "archive.parquet").to_pylist()
    assert len(rows) == 8
    assert {r["scored_by"] for r in rows} == {again["supernet"]["checkpoint_sha256"]}
    assert again["supernet"]["checkpoint_sha256"] != outcomes["supernet"]["checkpoint_sha256"]
    moved = list((copy / "superseded").glob("search-*/archive.parquet"))
    assert len(moved) == 1 and len(pq.read_table(moved[0])) == 8
    old = optuna.load_study(study_name="tiny", storage=f"sqlite:///{copy / 'study.db'}")
    assert len(old.trials) == len(
        optuna.load_study(
            study_name="tiny", storage=f"sqlite:///{Path(config.run_path) / 'study.db'}"
        ).trials
    )
    # the search's MLflow run is a new one; the old one is marked superseded
    state = json.loads((copy / "tracking.json").read_text())
    client = MlflowClient(tracking_uri(None, str(copy)))
    original = json.loads((Path(config.run_path) / "tracking.json").read_text())
    assert state["stages"]["search"] != original["stages"]["search"]
    assert client.get_run(original["stages"]["search"]).data.tags["raynas.superseded"] == "true"
    parent = client.get_run(state["parent"])
    assert parent.data.params["supernet.epochs"] == "1"
    assert parent.data.params["supernet.epochs.resume_1"] == "2"


def test_the_report_names_the_test_top1_of_the_best_val_model(finished):
    config, outcomes = finished
    exported = outcomes["export"]
    best = max(exported["models"], key=lambda m: m["val_top1"])
    assert exported["best_val"] == best["arch_id"]
    assert exported["test_top1_of_best_val"] == best["test_top1"]
    assert "best_test_top1" not in json.dumps(exported)
    text = (Path(config.run_path) / "report.md").read_text()
    assert f"`{best['arch_id']}`, test top-1 {best['test_top1']:.2f}%" in text


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
    data = tiny_run(tmp_path / "run", supernet={"epochs": 30})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [RAYNAS, "run", str(tmp_path / "c.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:  # the first epoch line: training is under way
        if "[supernet] epoch 1/30" in line:
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
