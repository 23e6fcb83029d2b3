"""The `supernet` stage on real Ray Train (2 CPU workers, gloo DDP), real MLflow stores and a
real Fashion-MNIST subset, driven in-process on one Ray cluster for the module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.config import parse
from orchestrator.pipeline import run_stages
from search_spaces import build_space
from tests.helpers.servers import local_ray, mlflow_server
from trainables.data import load_splits
from trainables.train import checkpoint as ckpt
from trainables.train.loop import evaluate

pytestmark = pytest.mark.slow

SMALL_SPACE = {
    "embed_dims": [32, 48],
    "depths": [2, 3],
    "num_heads": [2, 3],
    "mlp_ratios": [2.0, 3.0],
}


def make_config(run_dir: Path, train: int = 1024, **supernet) -> dict:
    """A tiny stage config; `train` images (3072 where accuracy is measured)."""
    return {
        "name": "t",
        "method": "autoformer",
        "run_dir": str(run_dir),
        "data": {"name": "fashion_mnist", "download": False, "subset": {"train": train, "val": 512}},
        "space": {"preset": "vit-28", "overrides": SMALL_SPACE},
        "supernet": {
            "epochs": 2, "batch_size": 128, "lr": 2e-3, "warmup_epochs": 0.5, "eval_subnets": 2,
            "resources": {"workers": 2, "cpus_per_worker": 1}, **supernet,
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray started as `raynas` starts one (workers at normal priority)."""
    with local_ray():
        yield


def train_supernet(config):
    """The supernet stage alone, as `raynas train` runs it."""
    return run_stages(config, only=["supernet"])["supernet"]


def epochs_logged(uri: str, run_id: str, metric: str = "train_loss") -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, metric)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_cluster):
    """One 2-epoch sandwich run recording its archs; several tests read it."""
    run_dir = tmp_path_factory.mktemp("run")
    config = parse(make_config(run_dir, train=3072, sampling="sandwich", record_archs=True), "test")
    return config, train_supernet(config)


def test_training_improves_val_accuracy_and_writes_checkpoints(trained):
    config, outcome = trained
    run_dir = Path(config.run_path)
    assert outcome["epochs"] == 2 and [h["epoch"] for h in outcome["history"]] == [1, 2]
    folders = sorted(p.name for p in (run_dir / "supernet").glob("epoch_*"))
    assert folders == ["epoch_0001", "epoch_0002"]
    weights = torch.load(run_dir / "supernet" / "epoch_0002" / "supernet.pt", weights_only=True)
    state = torch.load(run_dir / "supernet" / "epoch_0002" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 2 and "optimizer" in state
    # the untrained supernet (same initial weights) vs the trained one, on the same val split
    space = build_space("vit", "vit-28", SMALL_SPACE)
    splits = load_splits(config.data)
    val = list(range(len(splits.val)))
    torch.manual_seed(config.seed)
    model = space.build_supernet().eval()
    before = evaluate(model, space.largest(), splits.val, val, 512, torch.device("cpu"), None)[
        0
    ] / len(val)
    model.load_state_dict(weights)
    after = evaluate(model, space.largest(), splits.val, val, 512, torch.device("cpu"), None)[
        0
    ] / len(val)
    assert after > before + 0.10, (before, after)
    assert outcome["history"][-1]["val_top1_largest"] == pytest.approx(100 * after)
    assert outcome["history"][-1]["images_per_s"] > 0


def test_every_rank_trains_the_same_subnet_each_step(trained):
    config, _ = trained
    logs = Path(config.run_path) / "supernet" / "archs"
    steps = {}
    for rank in (0, 1):
        lines = [json.loads(line) for line in (logs / f"rank{rank}.jsonl").read_text().splitlines()]
        steps[rank] = {(d["epoch"], d["step"]): d["archs"] for d in lines}
    assert steps[0] == steps[1]
    assert len(steps[0]) == 2 * 3072 // 128  # every step of both epochs
    assert all(
        len(archs) == 3 for archs in steps[0].values()
    )  # sandwich: largest, smallest, random
    assert len({archs[2] for archs in steps[0].values()}) > 5


def test_mlflow_sqlite_store_has_parent_and_nested_runs(trained):
    config, outcome = trained
    run_dir = Path(config.run_path)
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    state = json.loads((run_dir / "tracking.json").read_text())
    parent, nested = client.get_run(state["parent"]), client.get_run(state["stages"]["supernet"])
    assert nested.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert nested.info.status == "FINISHED" and nested.info.run_name == "supernet"
    assert parent.info.status == "FINISHED"  # `raynas train` alone is the whole run
    assert (
        parent.data.params["supernet.epochs"] == "2"
        and parent.data.params["data.name"] == "fashion_mnist"
    )
    assert nested.data.params["supernet.sampling"] == "sandwich"
    for metric in (
        "train_loss",
        "images_per_s",
        "val_top1_smallest",
        "val_top1_largest",
        "val_top1_random1",
    ):
        assert epochs_logged(uri, nested.info.run_id, metric) == [1, 2], metric
    artifacts = {a.path for a in client.list_artifacts(nested.info.run_id, "checkpoint")}
    assert "checkpoint/supernet.pt" in artifacts and "checkpoint/train_state.pt" in artifacts
    assert outcome["mlflow_run_id"] == nested.info.run_id


def test_completed_stage_is_skipped(trained, capsys):
    config, outcome = trained
    assert train_supernet(config) == outcome
    assert "[supernet] up to date; skipping" in capsys.readouterr().out


@pytest.fixture(scope="module")
def recovered(tmp_path_factory, ray_cluster):
    """One 3-epoch run whose rank 1 fails at epoch 2, tracked on a real `mlflow server` (kept up
    for the tests that read it)."""
    folder = tmp_path_factory.mktemp("recovered")
    with mlflow_server(folder) as uri:
        run_dir = folder / "run"
        data = make_config(
            run_dir, epochs=3, max_failures=1, inject_failure={"epoch": 2, "step": 5, "rank": 1}
        )
        data["tracking"] = {"uri": uri, "experiment": "server-test"}
        yield uri, run_dir, train_supernet(parse(data, "test"))


def test_mlflow_server_receives_the_runs(recovered):
    uri, _, outcome = recovered
    client = MlflowClient(uri)
    run = client.get_run(outcome["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "server-test"
    assert epochs_logged(uri, run.info.run_id, "val_top1_largest") == [1, 2, 3]
    assert "mlflow.parentRunId" in run.data.tags and run.data.params["supernet.epochs"] == "3"
    assert "checkpoint/supernet.pt" in {
        a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")
    }


def test_worker_failure_recovers_from_last_checkpoint(recovered):
    uri, run_dir, outcome = recovered
    assert (run_dir / "supernet" / ".failure_injected").exists()  # the failure did happen
    assert [h["epoch"] for h in outcome["history"]] == [1, 2, 3]
    # each epoch logged once: the restarted group went on from epoch 1's checkpoint
    assert epochs_logged(uri, outcome["mlflow_run_id"]) == [1, 2, 3]


def test_corrupt_checkpoint_fails_before_training(trained, tmp_path):
    import shutil

    config, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(config.run_path, copy)
    (copy / "supernet" / "result.json").unlink()
    (copy / "supernet" / "epoch_0002" / "supernet.pt").write_bytes(b"not a checkpoint")
    data = make_config(copy, train=3072, epochs=3, sampling="sandwich", record_archs=True)
    with pytest.raises(
        ckpt.CheckpointError, match=r"epoch_0002/supernet.pt is corrupt or not a torch file"
    ):
        train_supernet(parse(data, "test"))
