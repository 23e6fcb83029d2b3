"""IT-NAS end to end (supernet -> select -> retrain -> export -> report) on one local Ray with
2 Ray Train workers, a Fashion-MNIST subset and a tiny NAS-Bench-201 cell supernet; then a
search against the NAS-Bench-201 table. One run is shared by the module's tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from orchestrator.config import parse
from orchestrator.pipeline import run_pipeline, run_stages
from orchestrator.tracking import tracking_uri
from search_spaces import build_from_spec, build_space
from search_spaces.cell.table import load_nb201_table
from tests.helpers.servers import local_ray
from trainables.data import load_splits

pytestmark = pytest.mark.slow

TINY_CELL = {"channels": 4, "cells_per_stage": 1}


def itnas_run(run_dir: Path, name: str = "itnas", **sections) -> dict:
    data = {
        "name": name,
        "method": "it-nas",
        "run_dir": str(run_dir),
        "data": {
            "name": "fashion_mnist",
            "download": False,
            "subset": {"train": 512, "val": 256, "test": 256},
        },
        "space": {"preset": "nb201-28", "overrides": dict(TINY_CELL)},
        "supernet": {
            "epochs": 1, "batch_size": 64, "selector": {"mode": "bilevel"},
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
        "select": {"batch_size": 128},
        "retrain": {
            "epochs": 1, "batch_size": 64, "eval_batch_size": 256,
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
        "tracking": {"experiment": "tests-itnas"},
    }  # fmt: skip
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return data


@pytest.fixture(scope="module")
def ray_cluster(access_log):
    with local_ray():
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_cluster):
    config = parse(itnas_run(tmp_path_factory.mktemp("itnas") / "run"), "test")
    return config, run_pipeline(config)


def test_default_stages_and_method_defaults(finished):
    config, outcomes = finished
    assert list(outcomes) == ["supernet", "select", "retrain", "export", "report"]
    assert config.supernet.sampling == "mixed" and config.supernet.optimizer == "sgd"
    assert config.supernet.lr == 0.025 and config.retrain.nesterov


def test_selector_training_reads_train_only(finished, access_log):
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    by_purpose: dict[str, set[str]] = {}
    for entry in entries:
        by_purpose.setdefault(entry["purpose"], set()).add(entry["split"])
    assert by_purpose["supernet"] == {"train"}
    assert by_purpose["supernet-preflight"] == {"train"}
    assert by_purpose["select"] == {"train", "val"}  # val pass; train slice for BN statistics
    assert [e["purpose"] for e in entries if e["split"] == "test"] == ["export"]


def test_selection_is_the_argmax_of_the_recorded_importances(finished):
    config, outcomes = finished
    selection = outcomes["select"]
    space = build_space(**config.space_spec)
    scores = torch.tensor(selection["scores"]["cell"])
    assert scores.shape == (6, 5)
    torch.testing.assert_close(scores.sum(1), torch.ones(6))
    arch = space.from_json(json.dumps(selection["arch"]))
    assert arch == space.select({"cell": scores})
    assert selection["text"] == space.describe(arch) and selection["text"].startswith("|")
    table = load_nb201_table()
    assert selection["table"]["accuracy"] == pytest.approx(table.accuracy(arch))
    assert selection["table"]["percentile"] == pytest.approx(table.percentile(arch))
    assert 0 <= selection["val_top1_inherited"] <= 100
    heatmap = Path(config.run_path) / selection["heatmap"]
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_retrained_arch_is_exported_and_reloads(finished):
    config, outcomes = finished
    retrained, exported = outcomes["retrain"], outcomes["export"]
    assert retrained["arch_id"] == outcomes["select"]["arch_id"]
    assert retrained["epochs"] == 1 and "val_top1_selected" in retrained["history"][-1]
    # the workers trained the arch's own network: its checkpoint holds nothing else
    space = build_space(**retrained["space"])
    arch = space.from_json(json.dumps(retrained["arch"]))
    weights = torch.load(
        Path(config.run_path) / retrained["checkpoint"] / "supernet.pt", weights_only=True
    )
    network = space.build_supernet().extract(arch).state_dict()
    assert retrained["standalone"] and sorted(weights) == sorted(f"model.{k}" for k in network)
    (model_info,) = exported["models"]
    assert model_info["arch_id"] == retrained["arch_id"]
    assert 0 < model_info["test_top1"] <= 100
    # the exported network is the retrained one: same val score as during retraining
    assert model_info["val_top1_extracted"] == pytest.approx(model_info["val_top1"], abs=0.01)
    folder = Path(config.run_path) / model_info["path"]
    model = build_from_spec(json.loads((folder / "model.json").read_text()))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    x, _ = load_splits(config.data, ("val",), purpose="test-check").val.batch(list(range(8)))
    assert model.eval()(x).shape == (8, 10)


def test_mlflow_runs_and_report(finished):
    config, outcomes = finished
    client = MlflowClient(tracking_uri(config.tracking.uri, config.run_path))
    state = json.loads((Path(config.run_path) / "tracking.json").read_text())
    assert set(state["stages"]) == {"supernet", "select", "retrain", "export", "report"}
    for stage, run_id in state["stages"].items():
        assert client.get_run(run_id).info.status == "FINISHED", stage
    select_run = client.get_run(state["stages"]["select"])
    assert "table_percentile" in select_run.data.metrics
    assert select_run.data.params["selected"] == outcomes["select"]["text"]
    assert "importance.png" in {a.path for a in client.list_artifacts(select_run.info.run_id)}
    text = (Path(config.run_path) / "report.md").read_text()
    assert outcomes["select"]["text"] in text and "percentile" in text
    assert f"{outcomes['export']['models'][0]['test_top1']:.2f}" in text


def test_resume_skips_finished_stages_and_continues_retraining(finished, capsys):
    config, outcomes = finished
    again = run_pipeline(config)
    assert again["select"]["arch_id"] == outcomes["select"]["arch_id"]
    assert again["retrain"]["checkpoint"] == outcomes["retrain"]["checkpoint"]
    longer = parse(itnas_run(Path(config.run_path), retrain={"epochs": 2}), "test")
    grown = run_stages(longer)
    out = capsys.readouterr().out
    assert "[supernet] up to date; skipping" in out and "[select] up to date; skipping" in out
    assert "[retrain] re-run, retrain.epochs 1 -> 2" in out
    assert grown["retrain"]["epochs"] == 2
    assert [h["epoch"] for h in grown["retrain"]["history"]] == [1, 2]
    assert grown["export"]["models"][0]["arch_id"] == outcomes["select"]["arch_id"]


def test_search_against_the_nas_bench_201_table(finished, tmp_path, access_log):
    before = access_log.read_text()
    data = itnas_run(
        tmp_path / "table",
        name="itnas-table",
        stages=["search"],
        search={
            "evaluator": "table",
            "strategy": "evolution",
            "budget": 12,
            "evolution": {"population": 6, "parents": 3, "mutations": 3, "crossovers": 3},
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
    )
    config = parse(data, "test")
    outcome = run_stages(config)["search"]
    assert outcome["evaluated"] == 12 and outcome["evaluator"] == "table"
    rows = pq.read_table(Path(config.run_path) / "archive.parquet").to_pylist()
    table = load_nb201_table()
    space = build_space(**config.space_spec)
    assert len({r["arch_id"] for r in rows}) == 12
    for row in rows:
        assert row["val_top1"] == pytest.approx(table.accuracy(space.from_json(row["arch"])))
        assert row["scored_by"].startswith("table:")
    assert access_log.read_text() == before  # a table search reads no data at all


def test_single_level_training_moves_the_darts_alphas(finished, tmp_path):
    data = itnas_run(
        tmp_path / "single",
        name="itnas-single",
        stages=["supernet"],
        space={"preset": "nb201-28", "overrides": {**TINY_CELL, "selector": "darts"}},
        supernet={"selector": {"mode": "single", "lr": 0.01}},
    )
    config = parse(data, "test")
    trained = run_stages(config)["supernet"]
    assert "selector_loss" not in trained["history"][-1]  # no carve-out, no selector batches
    weights = torch.load(
        Path(config.run_path) / trained["checkpoint"] / "supernet.pt", weights_only=True
    )
    torch.manual_seed(config.seed)  # the workers' initial weights
    fresh = build_space(**config.space_spec).build_supernet().state_dict()
    moved = (weights["selector.cell"] - fresh["selector.cell"]).abs().max().item()
    assert moved > 1e-3, "single-level training left the alphas where they started"
