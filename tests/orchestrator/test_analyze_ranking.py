"""`raynas analyze ranking RUN_DIR`: ranking fidelity of a trained supernet.

The statistics helper against scipy (pure); the analysis end to end on one tiny autoformer run
(a supernet trained 1 epoch in this process, then the real search stage; made once for the
module) on a local Ray: 4 subnets trained from scratch for 1 epoch as Ray Tune trials, 2 at
once; then the command again after one subnet's result was deleted (only that one is trained
again); the epoch-checkpoint resume of one subnet's training (a cell network) in process;
one-line errors for bad input; every family's stand-alone recipe."""

from __future__ import annotations

import contextlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from orchestrator import rundir
from orchestrator.analysis.ranking import (
    PLOT_FILE,
    RESULT_FILE,
    SUBNETS_DIR,
    Subnet,
    analyze_ranking,
    choose_subnets,
    inherited_scores,
    output_dir,
    rank_correlations,
    ranking_recipe,
)
from orchestrator.config import parse
from orchestrator.config.schema import RetrainConfig
from orchestrator.errors import ConfigError, UserInputError
from orchestrator.pipeline import config_for_resume
from orchestrator.tracking import TRACKING_FILE
from search_spaces import arch_id, build_space, list_families
from tests.helpers.configs import SMALL_SPACE, tiny_run
from tests.helpers.servers import local_ray
from trainables.data import DataConfig
from trainables.train.config import SupernetTrainConfig
from trainables.train.loop import InjectedFailure
from trainables.train.standalone import SubnetJob, load_state, train_subnet

SUBNETS = 4


# ------------------------------------------------------------------------------ statistics
def test_rank_correlations_match_scipy_on_known_rankings():
    inherited = [61.0, 64.5, 70.2, 71.0, 75.3, 80.1]
    standalone = [70.0, 69.0, 74.0, 78.0, 77.5, 83.0]  # two swapped pairs
    out = rank_correlations(inherited, standalone, resamples=500, seed=1)
    assert out["kendall_tau"] == pytest.approx(stats.kendalltau(inherited, standalone).statistic)
    assert out["kendall_tau"] == pytest.approx(11 / 15)  # 13 concordant, 2 discordant pairs
    assert out["spearman_rho"] == pytest.approx(stats.spearmanr(inherited, standalone).statistic)
    assert out["spearman_rho"] == pytest.approx(1 - 6 * 4 / (6 * 35))
    low, high = out["kendall_tau_interval"]
    assert -1.0 <= low <= out["kendall_tau"] <= high <= 1.0
    assert out["bootstrap"]["resamples"] == 500 and 0 < out["bootstrap"]["valid"] <= 500
    assert out == rank_correlations(inherited, standalone, resamples=500, seed=1)  # seeded
    assert out != rank_correlations(inherited, standalone, resamples=500, seed=2)

    same = rank_correlations([1, 2, 3, 4], [10, 20, 30, 40], resamples=200)
    assert same["kendall_tau"] == 1.0 and same["kendall_tau_interval"] == [1.0, 1.0]
    reverse = rank_correlations([1, 2, 3, 4], [4, 3, 2, 1], resamples=200)
    assert reverse["spearman_rho"] == -1.0 and reverse["spearman_rho_interval"] == [-1.0, -1.0]
    flat = rank_correlations([1, 2, 3], [5, 5, 5], resamples=50)
    assert flat["kendall_tau"] is None and flat["kendall_tau_interval"] == [None, None]


def test_bootstrap_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(scale=1.0, size=40)
    out = rank_correlations(x.tolist(), y.tolist(), resamples=1000, seed=0)
    reference = stats.bootstrap(
        (x, y),
        lambda a, b: stats.kendalltau(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=1000,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(1),
    ).confidence_interval
    assert out["kendall_tau_interval"] == pytest.approx([reference.low, reference.high], abs=0.05)


def test_subnet_choice_spreads_the_front_and_spans_the_space():
    space = build_space("vit", "vit-28", SMALL_SPACE)
    rng = random.Random(5)
    archs = {arch_id(a): a for a in (space.sample(rng) for _ in range(40))}
    rows = [{"arch_id": k, "arch": space.to_json(a)} for k, a in archs.items()]
    front = rows[:5]
    chosen = choose_subnets(space, 8, seed=3, front=front, archived=rows)
    assert chosen == choose_subnets(space, 8, seed=3, front=front, archived=rows)  # seeded
    assert chosen != choose_subnets(space, 8, seed=4, front=front, archived=rows)
    ids = [s.aid for s in chosen]
    assert len(set(ids)) == 8 and [s.flops for s in chosen] == sorted(s.flops for s in chosen)
    assert {arch_id(space.smallest()), arch_id(space.largest())} <= set(ids)
    by_cost = sorted(front, key=lambda r: space.cost(space.from_json(r["arch"]))["flops"])
    picked = [s.aid for s in chosen if s.source == "front"]
    assert len(picked) == 4 and set(picked) <= {r["arch_id"] for r in front}
    assert by_cost[0]["arch_id"] in picked and by_cost[-1]["arch_id"] in picked  # both ends
    # a front of one: the rest of the archive tops the front half up
    small = choose_subnets(space, 6, seed=3, front=front[:1], archived=rows)
    assert [s.source for s in small].count("front") == 1
    assert [s.source for s in small].count("archive") == 2
    # no search: all from the space; too many for the space: one line naming the limit
    assert {s.source for s in choose_subnets(space, 5, seed=0)} == {"space"}
    single = build_space(
        "vit", "vit-28", {"embed_dims": [32], "depths": [2], "num_heads": [2], "mlp_ratios": [2.0]}
    )
    with pytest.raises(UserInputError, match="gave only 1 distinct subnets"):
        choose_subnets(single, 3, seed=0)


def test_family_recipes_and_config_overrides(tmp_path):
    config = parse(tiny_run(tmp_path / "r", analysis={"ranking": {"recipe": {"lr": 0.01}}}), "t")
    vit = ranking_recipe(build_space("vit", "vit-28", SMALL_SPACE), config, epochs=3)
    assert (vit.optimizer, vit.label_smoothing, vit.weight_decay) == ("adamw", 0.1, 0.05)
    assert vit.epochs == 3  # --epochs
    assert vit.lr == 0.01  # the config's override
    for family in list_families():  # every family's recipe is a valid recipe, as plain data
        recipe = build_space(family, None).standalone_recipe()
        assert json.loads(json.dumps(recipe)) == recipe and not set(recipe) & {"epochs", "distill"}
        SupernetTrainConfig(**recipe)
    lowrank = build_space("lowrank", "vit-28").standalone_recipe()
    assert lowrank == build_space("vit", "vit-28").standalone_recipe()
    cell = build_space("cell", "nb201-28").standalone_recipe()
    defaults = RetrainConfig()
    assert cell == {k: getattr(defaults, k) for k in cell}  # retrain's NB201 recipe
    assert cell["optimizer"] == "sgd" and cell["nesterov"] is True
    with pytest.raises(ConfigError, match="epochs cannot be set here"):
        parse(tiny_run(tmp_path / "r", analysis={"ranking": {"recipe": {"epochs": 2}}}), "t")
    with pytest.raises(ConfigError, match="bogus"):
        parse(tiny_run(tmp_path / "r", analysis={"ranking": {"recipe": {"bogus": 1}}}), "t")


# ------------------------------------------------------------------------------ one subnet
TINY_DATA = DataConfig(
    name="fashion_mnist", download=False, subset={"train": 256, "val": 128, "test": 64}
)


def job(space_spec: dict, arch_json: str, folder: Path, **recipe) -> SubnetJob:
    space = build_space(**space_spec)
    values = {**space.standalone_recipe(), "batch_size": 64, "epochs": 2, **recipe}
    return SubnetJob(
        train=SupernetTrainConfig(**values), data=TINY_DATA, space=space_spec,
        arch=arch_json, seed=0, folder=str(folder), fingerprint="fp",
    )  # fmt: skip


@contextlib.contextmanager
def one_thread():
    """Torch on one thread: networks this small gain nothing from two, and on a busy machine
    the second thread's spinning costs ~10x (as in a trial, which gets its one CPU's thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


CELL = {"family": "cell", "preset": "nb201-28", "overrides": {"channels": 4, "cells_per_stage": 1}}


@one_thread()
def test_a_killed_training_resumes_from_its_last_epoch(tmp_path):
    """A cell network (the ViT families train through Tune below): trained whole, and killed
    in its second epoch and trained again: the same history, from the epoch-1 checkpoint (a
    network with BatchNorm, whose running statistics are part of the checkpoint)."""
    space = build_space(**CELL)
    arch = space.sample(random.Random(0))
    seen = []
    whole = train_subnet(job(CELL, space.to_json(arch), tmp_path / "whole"), report=seen.append)
    assert [(m["epoch"], m["final"]) for m in seen] == [(1, False), (2, True)]
    assert whole["resumed_from"] == 0 and whole["epochs"] == 2
    assert whole["params"] == space.cost(arch)["params"]  # the standalone network, not a supernet
    assert whole["val_images"] == 128 and whole["train_images"] == 256

    hook = {"inject_failure": {"epoch": 2, "step": 1}}
    interrupted = job(CELL, space.to_json(arch), tmp_path / "cut", **hook)
    with pytest.raises(InjectedFailure):
        train_subnet(interrupted)
    assert load_state(tmp_path / "cut", "fp")["epoch"] == 1
    resumed = train_subnet(interrupted)
    assert resumed["resumed_from"] == 1
    keys = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1")  # not timings
    history = [{k: h[k] for k in keys} for h in json.loads(resumed["history"])]
    assert history == [{k: h[k] for k in keys} for h in json.loads(whole["history"])]
    assert load_state(tmp_path / "cut", "fp")["epoch"] == 2
    assert load_state(tmp_path / "cut", "other") is None  # other inputs: never resumed from


def train_supernet_here(config, run_dir: Path) -> Path:
    """The supernet checkpoint and `supernet/result.json` as the supernet stage leaves them,
    trained here for one epoch (uniform sampling, AdamW) instead of on Ray Train, whose worker
    group would cost this file ~30 s; the search that follows is the real stage."""
    import torch
    import torch.nn.functional as F

    from orchestrator.stages.supernet import file_sha256
    from trainables.data import load_splits
    from trainables.supernets import build_supernet
    from trainables.train import checkpoint
    from trainables.train.batches import MemoryBatches

    space = build_space(**config.space_spec)
    torch.manual_seed(0)
    model = build_supernet(space)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = random.Random(0)
    train = load_splits(config.data, ("train",), purpose="test-supernet").split("train")
    with one_thread():
        for x, y in MemoryBatches(train, 0, 1, 128, 0).epoch(1):
            loss = F.cross_entropy(model(x, space.sample(rng)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    folder = run_dir / "supernet" / "epoch_0001"
    checkpoint.save(folder, model.state_dict(), {}, {"epoch": 1, "history": []})
    result = {
        "epochs": 1,
        "checkpoint": "supernet/epoch_0001",
        "checkpoint_sha256": file_sha256(folder / checkpoint.WEIGHTS),
        "adapter": None,
        "space": config.space_spec,
        "history": [],
    }
    (run_dir / "supernet" / "result.json").write_text(json.dumps(result))
    return folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, access_log):
    """One tiny run (a supernet trained 1 epoch on 1024 images, then the search stage scoring
    8 candidates with it) on a local Ray that stays up for the analyses."""
    from orchestrator.pipeline import run_stages
    from orchestrator.stages.search import external_checkpoint

    run_dir = tmp_path_factory.mktemp("ranking") / "run"
    config = parse(tiny_run(run_dir, stages=["supernet", "search"]), "test")
    folder = train_supernet_here(config, run_dir)
    with local_ray():
        run_stages(config, only=["search"], inputs={"supernet": external_checkpoint(folder)})
        yield run_dir


@pytest.fixture(scope="module")
def analysed(trained_run):
    result = analyze_ranking(trained_run, subnets=SUBNETS, epochs=1)
    return trained_run, result


@pytest.fixture(scope="module")
def rerun(analysed):
    """The command (`raynas analyze ranking`, through the console script's `main` in this
    process) after one subnet's result was deleted: (run dir, the first result, the second,
    the deleted id, the other result files before, what the command printed)."""
    import contextlib
    import io

    from orchestrator import cli, console

    run_dir, first = analysed
    folder = output_dir(run_dir) / SUBNETS_DIR
    gone = first["rows"][1]["arch_id"]
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.json")}
    (folder / f"{gone}.json").unlink()
    argv = [
        "raynas",
        "analyze",
        "ranking",
        str(run_dir),
        "--subnets",
        str(SUBNETS),
        "--epochs",
        "1",
    ]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(sys, "argv", argv)
        try:
            with pytest.raises(SystemExit) as exit_:
                cli.main()
        finally:
            console.reset()  # the command routed the libraries' logs to the run's log file
    assert exit_.value.code in (0, None), printed.getvalue()
    second = json.loads((output_dir(run_dir) / RESULT_FILE).read_text())
    return run_dir, first, second, gone, kept, printed.getvalue()


@pytest.mark.slow
def test_subnets_come_from_the_front_and_the_space(analysed):
    run_dir, result = analysed
    rows = result["rows"]
    assert len(rows) == SUBNETS and len({r["arch_id"] for r in rows}) == SUBNETS
    config = config_for_resume(run_dir)
    space = build_space(**config.space_spec)
    ids = [r["arch_id"] for r in rows]
    assert arch_id(space.smallest()) in ids and arch_id(space.largest()) in ids
    assert sum(r["source"] in ("front", "archive") for r in rows) == SUBNETS // 2
    assert [r["flops"] for r in rows] == sorted(r["flops"] for r in rows)
    assert result["trained"] == ids  # all trained by the first invocation
    for row in rows:
        assert row["standalone"]["epochs"] == 1 and row["standalone"]["train_images"] == 1024
        assert row["standalone"]["val_images"] == 512 and row["trained_now"]


@pytest.mark.slow
def test_trials_ran_two_at_once_on_the_recipe(analysed):
    _, result = analysed
    runs = [r["standalone"] for r in result["rows"]]
    overlapping = [
        (a, b)
        for i, a in enumerate(runs)
        for b in runs[i + 1 :]
        if a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]
    ]
    assert overlapping and all(a["pid"] != b["pid"] for a, b in overlapping)
    assert result["recipe"]["optimizer"] == "adamw" and result["recipe"]["epochs"] == 1


@pytest.mark.slow
def test_inherited_scores_are_the_archives_or_scored_as_the_search_scores(analysed):
    import pyarrow.parquet as pq

    run_dir, result = analysed
    archive = {r["arch_id"]: r for r in pq.read_table(run_dir / "archive.parquet").to_pylist()}
    for row in result["rows"]:
        if row["inherited_from"] == "archive":
            assert row["inherited_val_top1"] == archive[row["arch_id"]]["val_top1"]
        else:
            assert row["inherited_from"] == "supernet" and row["arch_id"] not in archive
    # an archived arch scored again through the evaluator gives the archive's value
    from orchestrator.analysis.collapse import trained_supernet

    config = config_for_resume(run_dir)
    space = build_space(**config.space_spec)
    aid = next(r["arch_id"] for r in result["rows"] if r["arch_id"] in archive)
    subnet = Subnet(space.from_json(archive[aid]["arch"]), aid, "front", 0, 0)
    again = inherited_scores([subnet], [], trained_supernet(config), config, config.space_spec)
    assert again[aid][1] == "supernet"
    assert again[aid][0] == pytest.approx(archive[aid]["val_top1"], abs=1e-6)


@pytest.mark.slow
def test_statistics_files_and_nested_mlflow_run(analysed):
    from mlflow.tracking import MlflowClient

    run_dir, result = analysed
    out = output_dir(run_dir)
    data = json.loads((out / RESULT_FILE).read_text())
    rows = data["rows"]
    expect = rank_correlations(
        [r["inherited_val_top1"] for r in rows], [r["standalone_val_top1"] for r in rows], seed=0
    )
    assert data["statistics"] == expect
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / SUBNETS_DIR).iterdir()) == sorted(
        f"{r['arch_id']}.json" for r in rows
    )  # epoch checkpoints removed once a result is written
    assert not list(out.glob(".*.tmp"))

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    parent = json.loads((run_dir / TRACKING_FILE).read_text())["parent"]
    run = client.get_run(data["mlflow_run_id"])
    assert run.info.run_name == "analyze-ranking" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["subnets"] == str(SUBNETS) and run.data.params["epochs"] == "1"
    stats_ = data["statistics"]
    for name in ("kendall_tau", "spearman_rho"):
        if stats_[name] is not None:
            assert run.data.metrics[name] == pytest.approx(stats_[name])
            assert run.data.metrics[f"{name}_low"] == pytest.approx(stats_[f"{name}_interval"][0])
            assert run.data.metrics[f"{name}_high"] == pytest.approx(stats_[f"{name}_interval"][1])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "ranking")}
    assert artifacts == {"ranking/ranking.json", "ranking/ranking.png"}


@pytest.mark.slow
def test_the_analysis_reads_train_and_val_never_test(analysed, access_log):
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    read = {e["split"] for e in entries if e["purpose"] == "analyze-ranking"}
    assert read == {"train", "val"}


@pytest.mark.slow
def test_rerun_trains_only_the_subnet_whose_result_is_missing(rerun):
    run_dir, first, second, gone, kept, _ = rerun
    assert second["trained"] == [gone]
    assert [r["arch_id"] for r in second["rows"]] == [r["arch_id"] for r in first["rows"]]
    assert [r["trained_now"] for r in second["rows"]] == [
        r["arch_id"] == gone for r in first["rows"]
    ]
    folder = output_dir(run_dir) / SUBNETS_DIR
    for name, (content, mtime) in kept.items():
        if name != f"{gone}.json":
            path = folder / name
            assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
    assert (folder / f"{gone}.json").is_file()
    assert second["mlflow_run_id"] != first["mlflow_run_id"]


@pytest.mark.slow
def test_command_prints_tau_with_its_interval_and_the_plot(rerun):
    run_dir, _, second, _, _, printed = rerun
    assert "Kendall tau:" in printed and "Spearman rho:" in printed
    tau, (low, high) = (
        second["statistics"]["kendall_tau"],
        second["statistics"]["kendall_tau_interval"],
    )
    if tau is not None and low is not None:
        assert f"{tau:.3f}  (95% bootstrap interval {low:.3f} .. {high:.3f})" in printed
    assert f"plot: {output_dir(run_dir) / PLOT_FILE}" in printed
    for row in second["rows"]:
        assert row["arch_id"] in printed


# ------------------------------------------------------------------------------ bad input
def assert_one_error_line(capsys, monkeypatch, *args: str, expect: tuple[str, ...]) -> None:
    from orchestrator import cli

    monkeypatch.setattr(sys, "argv", ["raynas", "analyze", "ranking", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in expect:
        assert fragment in lines[0], lines[0]


def untrained_run(run_dir: Path) -> Path:
    rundir.prepare(parse(tiny_run(run_dir), "test"))
    return run_dir


def test_too_few_subnets_is_one_error_line(tmp_path, capsys, monkeypatch):
    run_dir = untrained_run(tmp_path / "run")
    args = (str(run_dir), "--subnets", "1")
    assert_one_error_line(capsys, monkeypatch, *args, expect=("--subnets 1", "allowed: 3 or more"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_run_without_trained_supernet_is_one_error_line(tmp_path, capsys, monkeypatch):
    run_dir = untrained_run(tmp_path / "run")
    assert_one_error_line(capsys, monkeypatch, str(run_dir), expect=("no trained supernet",))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
