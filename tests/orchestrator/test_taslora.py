"""TAS-LoRA end to end in-process on one local Ray: supernet -> mole -> search -> export ->
report on a Fashion-MNIST subset; the frozen supernet stays bit-identical and the exported
(merged) models reproduce what the search scored with router-mixed weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from orchestrator.config import parse
from orchestrator.config.schema import RayConfig
from orchestrator.pipeline import run_pipeline
from orchestrator.runtime import local_cluster_env
from orchestrator.tracking import tracking_uri
from tests.helpers.configs import tiny_run

pytestmark = pytest.mark.slow

MOLE = {
    "experts": 2, "rank": 2, "alpha": 4.0, "router_hidden": 16, "group_init_steps": 20,
    "epochs": 1, "lr": 3e-3, "resources": {"workers": 2, "cpus_per_worker": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    os.environ.update(local_cluster_env(RayConfig()))
    ray.init(num_cpus=2, namespace="raynas-tests", log_to_driver=False)
    try:
        run_dir = tmp_path_factory.mktemp("taslora") / "run"
        data = tiny_run(run_dir, name="tas", method="tas-lora", mole=MOLE)
        config = parse(data, "test")
        yield config, run_pipeline(config)
    finally:
        ray.shutdown()


def test_all_five_stages_ran_and_are_tracked(finished):
    config, outcomes = finished
    assert list(outcomes) == ["supernet", "mole", "search", "export", "report"]
    state = json.loads((Path(config.run_path) / "tracking.json").read_text())
    client = MlflowClient(tracking_uri(config.tracking.uri, config.run_path))
    mole_run = client.get_run(state["stages"]["mole"])
    assert mole_run.info.status == "FINISHED"
    assert mole_run.data.params["mole.experts"] == "2"
    assert [m.step for m in client.get_metric_history(mole_run.info.run_id, "train_loss")] == [1]
    assert "## Stage `mole`" in (Path(config.run_path) / "report.md").read_text()


def test_the_frozen_supernet_is_bit_identical_after_the_mole_stage(finished):
    config, outcomes = finished
    run_dir = Path(config.run_path)
    before = torch.load(
        run_dir / outcomes["supernet"]["checkpoint"] / "supernet.pt", weights_only=True
    )
    after = torch.load(run_dir / outcomes["mole"]["checkpoint"] / "supernet.pt", weights_only=True)
    base = {k.removeprefix("base."): v for k, v in after.items() if k.startswith("base.")}
    assert base.keys() == before.keys()
    assert all(torch.equal(base[k], before[k]) for k in before)
    experts = [k for k in after if not k.startswith("base.")]
    assert experts, "the MoLE checkpoint holds experts and router"


def test_search_scores_with_the_mole_weights_and_exports_merge_them(finished):
    config, outcomes = finished
    assert outcomes["search"]["checkpoint"] == outcomes["mole"]["checkpoint"]
    rows = pq.read_table(Path(config.run_path) / "archive.parquet").to_pylist()
    assert len(rows) == config.search.budget
    for model_info in outcomes["export"]["models"]:
        # a plain timm model with the merged weights scores what the MoLE supernet scored
        assert abs(model_info["val_top1_extracted"] - model_info["val_top1"]) < 0.01
        spec = json.loads((Path(config.run_path) / model_info["path"] / "model.json").read_text())
        assert spec["builder"] == "search_spaces.vit.timm_model:build_timm_vit"
