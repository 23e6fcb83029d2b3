"""FLORA end to end (pretrain -> filter -> supernet -> search -> export -> report) on one local
Ray: a tiny dense ViT trained on a Fashion-MNIST subset by 2 Ray Train workers, local supernets
as parallel Ray tasks, the low-rank supernet distilled from the dense model. One run is shared
by the module's tests; then the dense model from a checkpoint file, from a ViT-family export,
and from the hub (offline: one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from orchestrator.config import parse
from orchestrator.errors import UserInputError
from orchestrator.pipeline import run_pipeline, run_stages
from orchestrator.stages.filter import keep
from orchestrator.tracking import tracking_uri
from search_spaces import build_from_spec, build_space
from tests.helpers.configs import SMALL_SPACE
from tests.helpers.servers import local_ray
from trainables.data import load_splits

pytestmark = pytest.mark.slow

TINY_DENSE = {
    "patch_size": 7,
    "embed_dim": 32,
    "num_heads": [2, 2],
    "mlp_ratio": [2.0, 2.0],
    "head_dim": 16,
    "rank_ratios": [0.5, 1.0],
}
TIMM_KWARGS = {  # the same model as TINY_DENSE, as timm's VisionTransformer takes it
    "img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 32,
    "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
}  # fmt: skip


def flora_run(run_dir: Path, name: str = "flora", **sections) -> dict:
    data = {
        "name": name,
        "method": "flora",
        "run_dir": str(run_dir),
        "data": {
            "name": "fashion_mnist",
            "download": False,
            "subset": {"train": 1024, "val": 256, "test": 256},
        },
        "space": {"preset": "vit-28", "overrides": dict(TINY_DENSE)},
        "pretrain": {"epochs": 1, "lr": 3e-3, "resources": {"workers": 2, "cpus_per_worker": 1}},
        "filter": {
            "steps": 4, "max_images": 128, "keep_fraction": 0.5,
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
        "supernet": {
            "epochs": 1, "batch_size": 128, "lr": 1e-3, "eval_subnets": 1,
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
        "search": {
            "strategy": "evolution", "budget": 8, "eval_batch_size": 256,
            "evolution": {"population": 4, "parents": 2, "mutations": 1, "crossovers": 1},
            "resources": {"workers": 2, "cpus_per_worker": 1},
        },
        "export": {"max_models": 3},
        "tracking": {"experiment": "tests-flora"},
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
    config = parse(flora_run(tmp_path_factory.mktemp("flora") / "run"), "test")
    return config, run_pipeline(config)


def test_stages_and_method_defaults(finished):
    config, outcomes = finished
    assert list(outcomes) == ["pretrain", "filter", "supernet", "search", "export", "report"]
    assert config.supernet.distill.weight == 1.0 and config.supernet.distill.temperature == 1.0
    assert config.supernet.label_smoothing == 0.0


def test_pretrain_writes_a_dense_timm_model(finished):
    config, outcomes = finished
    pre = outcomes["pretrain"]
    assert pre["source"] == "train" and pre["epochs"] == 1
    folder = Path(config.run_path) / pre["dense"]
    model = build_from_spec(json.loads((folder / "model.json").read_text()))
    assert isinstance(model, VisionTransformer)
    assert model.blocks[0].attn.qkv.weight.shape == (96, 32)  # dense: no factored layers
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    space = build_space(**pre["space"])
    assert space.cost(space.largest())["flops"] == pre["flops"]
    assert 10 < pre["val_top1"] <= 100


def test_filter_keeps_the_front_and_full_rank(finished):
    config, outcomes = finished
    filtered = outcomes["filter"]
    rows = pq.read_table(Path(config.run_path) / filtered["candidates_file"]).to_pylist()
    assert sorted({r["block"] for r in rows}) == [0, 1]
    for block in (0, 1):
        mine = [r for r in rows if r["block"] == block]
        assert len(mine) == 8  # {0.5, 1}^3
        kept = [r for r in mine if r["kept"]]
        assert len(kept) >= 4  # keep_fraction 0.5
        assert any(r["choice"] == "1/1/1" for r in kept)
        for r in mine:  # a row is on the front iff nothing is at least as good and cheaper
            dominated = any(
                o is not r
                and o["flops"] <= r["flops"]
                and o["val_top1"] >= r["val_top1"]
                and (o["flops"] < r["flops"] or o["val_top1"] > r["val_top1"])
                for o in mine
            )
            assert r["front"] == (not dominated)
            if r["front"]:
                assert r["kept"]
        dropped = [r for r in mine if not r["kept"]]
        topped_up = [r for r in kept if not r["front"] and r["choice"] != "1/1/1"]
        if dropped and topped_up:
            assert max(r["gap"] for r in topped_up) <= min(r["gap"] for r in dropped)
    space = build_space(**filtered["space"])
    for block in (0, 1):
        allowed = {"/".join(f"{x:g}" for x in t) for t in space.config.allowed[block]}
        assert allowed == {r["choice"] for r in rows if r["block"] == block and r["kept"]}
    png = Path(config.run_path) / filtered["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_later_stages_use_the_filtered_space(finished):
    config, outcomes = finished
    restricted = outcomes["filter"]["space"]
    assert outcomes["supernet"]["space"] == restricted
    assert outcomes["search"]["space"] == restricted
    space = build_space(**restricted)
    archive = pq.read_table(Path(config.run_path) / "archive.parquet").to_pylist()
    assert len(archive) == 8
    for row in archive:
        space.validate(space.from_json(row["arch"]))  # raises on a filtered-out tuple


def test_export_measures_the_dense_reference_and_rebuilds(finished):
    config, outcomes = finished
    exported = outcomes["export"]
    reference = exported["reference"]
    assert reference["path"] == outcomes["pretrain"]["dense"]
    assert reference["flops"] == outcomes["pretrain"]["flops"]
    assert 0 < reference["test_top1"] <= 100
    space = build_space(**outcomes["search"]["space"])
    x, _ = load_splits(config.data, ("val",), purpose="test-check").val.batch(list(range(8)))
    for info in exported["models"]:
        assert info["flops_cut"] == pytest.approx(1 - info["flops"] / reference["flops"])
        folder = Path(config.run_path) / info["path"]
        spec = json.loads((folder / "model.json").read_text())
        model = build_from_spec(spec)
        model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
        arch = space.from_json(json.dumps(info["arch"]))
        assert space.cost(arch)["params"] == sum(p.numel() for p in model.parameters())
        for name in spec["kwargs"]["factored"]:
            assert isinstance(model.get_submodule(name), torch.nn.Sequential)
        assert model.eval()(x).shape == (8, 10)


def test_splits_read_by_each_stage(finished, access_log):
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    by_purpose: dict[str, set[str]] = {}
    for entry in entries:
        by_purpose.setdefault(entry["purpose"], set()).add(entry["split"])
    assert by_purpose["filter-0"] == {"train", "val"} and by_purpose["filter-1"] == {"train", "val"}
    assert by_purpose["pretrain"] == {"train", "val"}  # Ray Train workers, then the dense val
    assert [e["purpose"] for e in entries if e["split"] == "test"] == ["export"]


def test_mlflow_runs_and_report(finished):
    config, outcomes = finished
    client = MlflowClient(tracking_uri(config.tracking.uri, config.run_path))
    state = json.loads((Path(config.run_path) / "tracking.json").read_text())
    assert set(state["stages"]) == set(outcomes)
    for stage, run_id in state["stages"].items():
        assert client.get_run(run_id).info.status == "FINISHED", stage
    filter_run = state["stages"]["filter"]
    kept = client.get_metric_history(filter_run, "kept")
    assert sorted(m.step for m in kept) == [0, 0, 1]  # per block, and the total
    assert "candidates.parquet" in {a.path for a in client.list_artifacts(filter_run)}
    pre_run = client.get_run(state["stages"]["pretrain"])
    assert pre_run.data.metrics["dense_val_top1"] == pytest.approx(outcomes["pretrain"]["val_top1"])
    text = (Path(config.run_path) / "report.md").read_text()
    assert "## Candidate filtering" in text and "The dense model" in text
    assert "MACs cut" in text


def test_rerun_skips_every_finished_stage(finished, capsys):
    config, outcomes = finished
    again = run_pipeline(config)
    out = capsys.readouterr().out
    for stage in ("pretrain", "filter", "supernet", "search", "export"):
        assert f"[{stage}] up to date; skipping" in out
    assert again["export"]["models"] == outcomes["export"]["models"]


def test_filter_resumes_per_block(finished, capsys):
    config, outcomes = finished
    folder = Path(config.run_path) / "filter"
    kept_block = folder / "blocks" / "block_00.json"
    before = kept_block.stat().st_mtime_ns
    (folder / "blocks" / "block_01.json").unlink()
    (folder / "result.json").unlink()  # as if the driver died before the last block
    again = run_stages(config, only=["filter"])["filter"]
    out = capsys.readouterr().out
    assert "[filter] 1 of 2 local supernets to train" in out
    assert kept_block.stat().st_mtime_ns == before  # block 0 was not trained again
    assert again["space"] == outcomes["filter"]["space"]  # same seeds: the same kept sets


def dense_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    model = VisionTransformer(**TIMM_KWARGS)
    state = model.state_dict()
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrain_from_a_timm_checkpoint(tmp_path, suffix):
    path = tmp_path / f"vit{suffix}"
    state = dense_checkpoint(path)
    data = flora_run(
        tmp_path / "run",
        name="flora-ckpt",
        stages=["pretrain"],
        space={"preset": "vit-28", "overrides": {"rank_ratios": [0.5, 1.0]}},
        pretrain={"checkpoint": str(path), "timm_kwargs": TIMM_KWARGS},
    )
    pre = run_stages(parse(data, "test"))["pretrain"]
    assert pre["source"] == "checkpoint"
    overrides = pre["space"]["overrides"]
    assert overrides["embed_dim"] == 32 and overrides["num_heads"] == [2, 2]
    written = load_file(tmp_path / "run" / pre["dense"] / "model.safetensors")
    assert sorted(written) == sorted(state)
    assert all(torch.equal(written[k], state[k]) for k in state)


def test_pretrain_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    path = tmp_path / "vit.safetensors"
    dense_checkpoint(path)
    data = flora_run(
        tmp_path / "run",
        name="flora-bad",
        stages=["pretrain"],
        pretrain={"checkpoint": str(path), "timm_kwargs": {**TIMM_KWARGS, "embed_dim": 48}},
    )
    with pytest.raises(UserInputError, match=r"pretrain.checkpoint: the weights do not fit"):
        run_stages(parse(data, "test"))
    assert not (tmp_path / "run" / "pretrain" / "dense").exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    data["pretrain"] = {"checkpoint": str(garbage), "timm_kwargs": TIMM_KWARGS}
    with pytest.raises(UserInputError, match=r"is not a readable state dict"):
        run_stages(parse(data, "test"))


def test_pretrain_from_a_timm_name_offline_fails_in_one_line(tmp_path):
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("the hub is reachable here")
    except OSError:
        pass
    data = flora_run(
        tmp_path / "run", name="flora-hub", stages=["pretrain"],
        pretrain={"model": "vit_tiny_patch16_224"},
    )  # fmt: skip
    with pytest.raises(UserInputError) as info:
        run_stages(parse(data, "test"))
    message = str(info.value)
    assert "\n" not in message and "not reachable" in message
    assert "pretrain.checkpoint" in message and "pretrain.export" in message


def test_flora_compresses_a_vit_family_export(finished, tmp_path):
    """What an AutoFormer search exports (export/<arch id>/) is a dense model FLORA starts from:
    the space takes its per-block heads and MLP ratios, and the local supernets run on it."""
    vit = build_space("vit", "vit-28", {**SMALL_SPACE, "patch_size": 7})
    arch = vit.sample(__import__("random").Random(5))
    torch.manual_seed(0)
    model = vit.build_supernet().extract(arch)
    folder = tmp_path / "export" / vit.arch_id(arch)
    folder.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    (folder / "model.json").write_text(json.dumps(vit.export_spec(arch)))
    data = flora_run(
        tmp_path / "run",
        name="flora-export",
        stages=["pretrain", "filter"],
        space={"preset": "vit-28", "overrides": {"rank_ratios": [0.5, 1.0]}},
        pretrain={"export": str(folder)},
    )
    outcomes = run_stages(parse(data, "test"))
    overrides = outcomes["pretrain"]["space"]["overrides"]
    assert overrides["num_heads"] == list(arch.num_heads)
    assert overrides["mlp_ratio"] == list(arch.mlp_ratio)
    space = build_space(**outcomes["pretrain"]["space"])
    assert space.cost(space.largest())["params"] == vit.cost(arch)["params"]
    assert len(outcomes["filter"]["blocks"]) == arch.depth


def test_keep_rule_on_a_known_block():
    rows = [
        {"choice": "a", "flops": 1, "val_top1": 80.0},
        {"choice": "b", "flops": 2, "val_top1": 79.0},  # dominated by a, gap 1
        {"choice": "c", "flops": 3, "val_top1": 85.0},
        {"choice": "d", "flops": 3, "val_top1": 82.0},  # dominated by c, gap 3
        {"choice": "e", "flops": 4, "val_top1": 84.5},  # dominated by c, gap 0.5
        {"choice": "full", "flops": 5, "val_top1": 84.0},  # dominated, gap 1, always kept
    ]
    out = {r["choice"]: r for r in keep(rows, keep_fraction=0.75, full="full")}
    assert {k for k, r in out.items() if r["front"]} == {"a", "c"}
    assert out["d"]["gap"] == pytest.approx(3.0) and out["e"]["gap"] == pytest.approx(0.5)
    # front {a, c} + full = 3; ceil(0.75 x 6) = 5: topped up with e (gap 0.5), then b (gap 1)
    assert {k for k, r in out.items() if r["kept"]} == {"a", "c", "full", "e", "b"}
    tight = keep(rows, keep_fraction=0.1, full="full")
    assert {r["choice"] for r in tight if r["kept"]} == {"a", "c", "full"}
