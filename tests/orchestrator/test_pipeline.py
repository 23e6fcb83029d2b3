"""The whole autoformer pipeline (supernet -> search -> export -> report) in-process on one
local Ray, on a Fashion-MNIST subset, with real Optuna SQLite storage, the embedded MLflow
store and optuna-dashboard serving the study. One run is shared by the module's tests: they
read it, search its trained supernet again, or resume copies of it with changed inputs (resume
re-runs exactly what the changed inputs reach, from a copied run directory too)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from safetensors.torch import load_file

from orchestrator.config import parse
from orchestrator.pipeline import config_for_resume, run_pipeline, run_stages
from orchestrator.search.archive import encoded_of
from orchestrator.search.pareto import dominates, pareto_front
from orchestrator.stages.search import external_checkpoint, storage_url
from orchestrator.tracking import tracking_uri
from search_spaces import build_from_spec, build_space
from tests.helpers.configs import tiny_run
from tests.helpers.servers import free_port, local_ray, wait_http
from trainables.data import load_splits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(access_log):
    with local_ray():
        yield


def flops_cap() -> int:
    """A FLOPs ceiling that about 70% of uniformly drawn archs of the tiny space exceed."""
    space = build_space("vit", "vit-28", tiny_run(".")["space"]["overrides"])
    rng = random.Random(0)
    flops = sorted(space.cost(space.sample(rng))["flops"] for _ in range(400))
    return flops[120]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_cluster, access_log):
    """The run, its outcomes and the splits it read (logged before any other test of the
    module runs more stages)."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    data = tiny_run(run_dir, search={"constraints": {"flops": {"max": flops_cap()}}})
    config = parse(data, "test")
    outcomes = run_pipeline(config)
    reads = [json.loads(line) for line in access_log.read_text().splitlines()]
    return config, outcomes, reads


@pytest.fixture(scope="module")
def finished(pipeline):
    config, outcomes, _ = pipeline
    return config, outcomes


def archive_rows(config) -> list[dict]:
    return pq.read_table(Path(config.run_path) / "archive.parquet").to_pylist()


def study_of(config):
    return optuna.load_study(study_name=config.name, storage=storage_url(config))


def test_archive_holds_exactly_the_evaluated_trials(finished):
    config, outcomes = finished
    rows = archive_rows(config)
    study = study_of(config)
    evaluated = [
        t
        for t in study.trials
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]
    assert len(rows) == config.search.budget == outcomes["search"]["evaluated"]
    assert sorted(r["trial"] for r in rows) == sorted(t.number for t in evaluated)
    assert len({r["arch_id"] for r in rows}) == len(rows)
    assert study.metric_names == ["val_top1", "flops"]
    by_number = {t.number: t for t in evaluated}
    space = build_space("vit", "vit-28", config.space.overrides)
    for row in rows:
        trial = by_number[row["trial"]]
        assert trial.values == [row["val_top1"], row["flops"]]
        assert trial.user_attrs["arch_id"] == row["arch_id"]
        assert trial.user_attrs["params"] == row["params"]
        arch = space.decode(encoded_of(row))
        assert space.arch_id(arch) == row["arch_id"] and space.cost(arch)["flops"] == row["flops"]
        assert 0 <= row["val_top1"] <= 100 and row["end_time"] >= row["start_time"]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_candidates_outside_the_constraints_are_never_evaluated(finished):
    config, outcomes = finished
    cap = config.search.constraints.flops.max
    rows = archive_rows(config)
    assert all(r["flops"] <= cap for r in rows)
    rejected = [t for t in study_of(config).trials if "rejected" in t.user_attrs]
    assert rejected, "the cap excludes ~70% of the space; the sampler should hit it"
    assert all(t.state == TrialState.PRUNED and t.user_attrs["flops"] > cap for t in rejected)
    assert not {t.user_attrs["arch_id"] for t in rejected} & {r["arch_id"] for r in rows}
    assert outcomes["search"]["rejected"] == len(rejected)


def test_search_never_reads_the_test_split(pipeline):
    _, _, entries = pipeline
    test_reads = [e for e in entries if e["split"] == "test"]
    assert [e["purpose"] for e in test_reads] == ["export"]
    search_reads = {e["split"] for e in entries if e["purpose"] == "search"}
    assert search_reads == {"val"}
    assert {e["split"] for e in entries if e["purpose"] == "supernet"} == {"train", "val"}


def test_pareto_front_is_non_dominated_and_covers_the_archive(finished):
    config, _ = finished
    rows = archive_rows(config)
    front = pq.read_table(Path(config.run_path) / "pareto.parquet").to_pylist()
    assert front and [r["arch_id"] for r in front] == [
        r["arch_id"] for r in pareto_front(rows, ["flops"])
    ]

    def point(r):
        return (-r["val_top1"], r["flops"])

    front_ids = {r["arch_id"] for r in front}
    for f in front:
        assert not any(dominates(point(r), point(f)) for r in rows)
    for r in rows:
        if r["arch_id"] not in front_ids:
            assert any(dominates(point(f), point(r)) or point(f) == point(r) for f in front)
    assert (Path(config.run_path) / "pareto.png").stat().st_size > 10_000


def test_exported_models_reproduce_the_search_and_load_with_mlflow(finished):
    config, outcomes = finished
    summary = outcomes["export"]
    assert 1 <= len(summary["models"]) <= config.export.max_models
    splits = load_splits(config.data, ("val",), purpose="test-check")
    x, _ = splits.val.batch(list(range(16)))
    for model_info in summary["models"]:
        folder = Path(config.run_path) / model_info["path"]
        assert folder.name == model_info["arch_id"]
        # the standalone timm model scores what the supernet scored for its arch (same images)
        assert abs(model_info["val_top1_extracted"] - model_info["val_top1"]) < 0.01
        assert 0 < model_info["test_top1"] <= 100
        spec = json.loads((folder / "model.json").read_text())
        model = build_from_spec(spec)
        model.load_state_dict(load_file(folder / "model.safetensors"))
        model.eval()
        loaded = mlflow.pytorch.load_model(model_info["model_uri"]).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
        assert type(model).__module__.startswith("timm.")
        assert json.loads((folder / "arch.json").read_text())["arch_id"] == folder.name


def test_mlflow_has_the_parent_and_nested_stage_runs_with_artifacts(finished):
    config, _ = finished
    uri = tracking_uri(config.tracking.uri, config.run_path)
    client = MlflowClient(uri)
    state = json.loads((Path(config.run_path) / "tracking.json").read_text())
    parent = client.get_run(state["parent"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.budget"] == str(config.search.budget)
    assert set(state["stages"]) == {"supernet", "search", "export", "report"}
    for stage, run_id in state["stages"].items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", stage
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    search_run = state["stages"]["search"]
    names = {a.path for a in client.list_artifacts(search_run)}
    assert {"archive.parquet", "pareto.parquet", "pareto.png", "result.json"} <= names
    history = client.get_metric_history(search_run, "val_top1")
    assert sorted(m.step for m in history) == list(range(1, config.search.budget + 1))
    assert "report.md" in {a.path for a in client.list_artifacts(state["stages"]["report"])}


def test_report_lists_the_exported_subnets(finished):
    config, outcomes = finished
    text = (Path(config.run_path) / "report.md").read_text()
    for model_info in outcomes["export"]["models"]:
        assert model_info["arch_id"] in text
        assert f"{model_info['test_top1']:.2f}" in text
    assert "optuna-dashboard sqlite:///" in text and "mlflow ui --backend-store-uri" in text


def test_rerunning_a_finished_run_changes_nothing(finished):
    config, outcomes = finished
    before = (Path(config.run_path) / "archive.parquet").stat().st_mtime_ns
    trials = len(study_of(config).trials)
    again = run_pipeline(config)
    assert again["search"] == outcomes["search"]
    assert (Path(config.run_path) / "archive.parquet").stat().st_mtime_ns == before
    assert len(study_of(config).trials) == trials


def test_optuna_dashboard_serves_the_study(finished):
    config, _ = finished
    port = free_port()
    script = Path(sys.executable).with_name("optuna-dashboard")
    process = subprocess.Popen(
        [str(script), storage_url(config), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/studies", timeout=60)
        with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as response:
            studies = json.load(response)["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == config.name]
        with urllib.request.urlopen(
            f"{base}/api/studies/{study['study_id']}?after=0", timeout=10
        ) as response:
            detail = json.load(response)
        assert detail["objective_names"] == ["val_top1", "flops"]
        assert detail["directions"] == ["maximize", "minimize"]
        assert detail["best_trials"], "the Pareto front (best trials) is served"
        assert len(detail["trials"]) == len(study_of(config).trials)
        complete = [t for t in detail["trials"] if t["state"] == "Complete"]
        attrs = {a["key"] for a in complete[0]["user_attrs"]}
        assert {"arch", "arch_id", "params", "flops"} <= attrs
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("strategy", ["evolution", "tpe", "random"])
def test_every_strategy_searches_the_trained_supernet(finished, tmp_path, strategy):
    config, outcomes = finished
    data = tiny_run(
        tmp_path / "run",
        name=f"s-{strategy}",
        search={"strategy": strategy, "budget": 6, "objectives": ["params", "latency"]},
    )
    given = external_checkpoint(Path(config.run_path) / outcomes["supernet"]["checkpoint"])
    searched = run_stages(parse(data, "test"), only=["search"], inputs={"supernet": given})[
        "search"
    ]
    rows = pq.read_table(tmp_path / "run" / "archive.parquet").to_pylist()
    assert searched["evaluated"] == len(rows) == 6 and len({r["arch_id"] for r in rows}) == 6
    assert all(r["latency_ms"] > 0 for r in rows)  # measured because it is an objective
    study = optuna.load_study(
        study_name=f"s-{strategy}", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    )
    assert study.metric_names == ["val_top1", "params", "latency_ms"]
    sampled = [t for t in study.trials if "fixed_params" not in t.system_attrs]
    if strategy == "evolution":
        assert all("evolution:generation" in t.system_attrs for t in sampled)
    front = pq.read_table(tmp_path / "run" / "pareto.parquet").to_pylist()
    assert {r["arch_id"] for r in front} <= {r["arch_id"] for r in rows}


# ---------------------------------------------------------------------------------- resume
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
