"""`raynas analyze collapse RUN_DIR` on a run directory built without Ray: a saved (untrained)
supernet checkpoint and the supernet stage's result.json, as the stage leaves them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator import rundir
from orchestrator.analysis.collapse import (
    analyze_collapse,
    choose_archs,
    output_dir,
    probe_indices,
)
from orchestrator.config import parse
from orchestrator.errors import UserInputError
from orchestrator.tracking import TRACKING_FILE
from search_spaces import arch_id, build_space
from tests.helpers.configs import SMALL_SPACE, tiny_run
from trainables.train import checkpoint

SUBNETS = 5
PROBE = 96


def raynas(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("raynas")
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, env=env, timeout=300
    )


MOLE = {"experts": 2, "rank": 2, "alpha": 4.0, "router_hidden": 16}


def save_stage(
    run_dir: Path, stage: str, weights: dict[str, torch.Tensor], adapter: dict | None = None
) -> Path:
    """A checkpoint and `<stage>/result.json` as a finished training stage leaves them."""
    folder = run_dir / stage / "epoch_0001"
    checkpoint.save(folder, weights, {}, {"epoch": 1, "history": []})
    result = {
        "epochs": 1,
        "checkpoint": f"{stage}/epoch_0001",
        "adapter": adapter,
        "history": [],
        "metrics": {},
    }
    (run_dir / stage / "result.json").write_text(json.dumps(result))
    return folder


def make_run(run_dir: Path, trained: bool = True, **sections) -> Path:
    """A run directory as `raynas train` leaves it (config, checkpoint, supernet/result.json)."""
    config = parse(tiny_run(run_dir, **sections), "test")
    rundir.prepare(config)
    if trained:
        space = build_space(config.family, config.space.preset, dict(config.space.overrides))
        torch.manual_seed(0)
        save_stage(run_dir, "supernet", space.build_supernet().state_dict())
    return run_dir


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """One successful command run, shared by the checks below."""
    run_dir = make_run(tmp_path_factory.mktemp("collapse") / "run")
    result = raynas(
        "analyze", "collapse", str(run_dir), "--subnets", str(SUBNETS), "--probe", str(PROBE)
    )
    return run_dir, result


def test_command_prints_a_summary_and_the_path(analysed):
    run_dir, result = analysed
    assert result.returncode == 0, result.stderr
    assert "mean off-diagonal linear CKA: 0." in result.stdout
    assert "mean off-diagonal cosine:" in result.stdout
    assert str(output_dir(run_dir)) in result.stdout


def test_cka_json_holds_a_symmetric_matrix_with_unit_diagonal(analysed):
    run_dir, _ = analysed
    data = json.loads((output_dir(run_dir) / "cka.json").read_text())
    space = build_space("vit", "vit-28", SMALL_SPACE)
    archs = [space.decode(space.encode(space.arch_type(**a))) for a in data["archs"]]
    assert data["arch_ids"] == [arch_id(a) for a in archs]
    assert len(set(data["arch_ids"])) == SUBNETS
    assert archs[0] == space.smallest() and archs[-1] == space.largest()
    assert data["labels"][0].startswith("E32 D2") and data["labels"][-1].startswith("E48 D3")
    assert data["widths"] == [a.embed_dim for a in archs]
    assert data["probe"]["size"] == PROBE and len(set(data["probe"]["indices"])) == PROBE
    assert data["seed"] == 0 and data["supernet"]["class"] == "ViTSupernet"

    cka = data["cka"]
    assert len(cka) == SUBNETS and all(len(row) == SUBNETS for row in cka)
    for i in range(SUBNETS):
        assert cka[i][i] == pytest.approx(1.0)
        for j in range(SUBNETS):
            assert cka[i][j] == cka[j][i]
            assert 0.0 <= cka[i][j] <= 1.0
    off = [cka[i][j] for i in range(SUBNETS) for j in range(SUBNETS) if i != j]
    assert data["mean_cka"] == pytest.approx(sum(off) / len(off))
    assert 0.0 <= data["mean_cka"] <= 1.0


def test_cosine_is_null_exactly_where_widths_differ(analysed):
    run_dir, _ = analysed
    data = json.loads((output_dir(run_dir) / "cka.json").read_text())
    widths, cos = data["widths"], data["cosine"]
    assert len(set(widths)) == 2  # smallest and largest differ in width: some nulls
    same = []
    for i in range(SUBNETS):
        for j in range(SUBNETS):
            if widths[i] == widths[j]:
                assert cos[i][j] is not None and -1.0 <= cos[i][j] <= 1.0 + 1e-9
                if i != j:
                    same.append(cos[i][j])
            else:
                assert cos[i][j] is None
        assert cos[i][i] == pytest.approx(1.0)
    assert data["mean_cosine"] == pytest.approx(sum(same) / len(same))


def test_heatmap_png_is_written_and_no_temporary_files_remain(analysed):
    run_dir, _ = analysed
    folder = output_dir(run_dir)
    assert (folder / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in folder.iterdir()) == ["cka.json", "cka.png"]


def test_nested_mlflow_run_has_metrics_and_artifacts(analysed):
    from mlflow.tracking import MlflowClient

    run_dir, _ = analysed
    data = json.loads((output_dir(run_dir) / "cka.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    parent = json.loads((run_dir / TRACKING_FILE).read_text())["parent"]
    run = client.get_run(data["mlflow_run_id"])
    assert run.info.run_name == "analyze-collapse"
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["mean_cka"] == pytest.approx(data["mean_cka"])
    assert run.data.metrics["mean_cosine"] == pytest.approx(data["mean_cosine"])
    assert run.data.params["subnets"] == str(SUBNETS)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "collapse")}
    assert artifacts == {"collapse/cka.json", "collapse/cka.png"}


def test_rerun_gives_the_same_matrix_and_a_new_nested_run(analysed):
    run_dir, _ = analysed
    before = json.loads((output_dir(run_dir) / "cka.json").read_text())
    again = analyze_collapse(run_dir, subnets=SUBNETS, probe=PROBE)
    assert again["arch_ids"] == before["arch_ids"]
    assert again["probe"]["indices"] == before["probe"]["indices"]
    flat = [v for row in again["cka"] for v in row]
    assert flat == pytest.approx([v for row in before["cka"] for v in row], abs=1e-6)
    assert again["mlflow_run_id"] != before["mlflow_run_id"]


def test_arch_choice_is_seeded_distinct_and_spans_the_space():
    space = build_space("vit", "vit-28", SMALL_SPACE)
    archs = choose_archs(space, 6, seed=3)
    assert archs == choose_archs(space, 6, seed=3)
    assert archs != choose_archs(space, 6, seed=4)
    assert len({arch_id(a) for a in archs}) == 6
    assert archs[0] == space.smallest() and archs[-1] == space.largest()
    assert choose_archs(space, 2, seed=0) == [space.smallest(), space.largest()]
    single = build_space(
        "vit", "vit-28", {"embed_dims": [32], "depths": [2], "num_heads": [2], "mlp_ratios": [2.0]}
    )
    with pytest.raises(UserInputError, match="only 1 distinct subnets"):
        choose_archs(single, 2, seed=0)


def test_probe_indices_depend_on_the_split_seed_only():
    first = probe_indices(512, 64, split_seed=0)
    assert torch.equal(first, probe_indices(512, 64, split_seed=0))
    assert not torch.equal(first, probe_indices(512, 64, split_seed=1))
    assert len(set(first.tolist())) == 64 and torch.equal(first, first.sort().values)


def assert_one_error_line(capsys, monkeypatch, *args: str, expect: tuple[str, ...]) -> None:
    """`raynas analyze collapse ARGS` through the console script's `main` (in this process,
    sparing a process start per case): exit 1 and one `error:` line naming `expect`."""
    from orchestrator import cli

    monkeypatch.setattr(sys, "argv", ["raynas", "analyze", "collapse", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in expect:
        assert fragment in lines[0], lines[0]


def test_folder_without_config_is_one_error_line(tmp_path, capsys, monkeypatch):
    assert_one_error_line(capsys, monkeypatch, str(tmp_path), expect=("no config.yaml",))
    assert list(tmp_path.iterdir()) == []


def test_run_without_trained_supernet_is_one_error_line(tmp_path, capsys, monkeypatch):
    run_dir = make_run(tmp_path / "run", trained=False)
    assert_one_error_line(capsys, monkeypatch, str(run_dir), expect=("no trained supernet",))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_fewer_than_two_subnets_is_one_error_line(tmp_path, capsys, monkeypatch):
    run_dir = make_run(tmp_path / "run", trained=False)
    args = (str(run_dir), "--subnets", "1")
    assert_one_error_line(capsys, monkeypatch, *args, expect=("--subnets 1", "allowed: 2 or more"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_probe_larger_than_the_val_split_is_one_error_line(tmp_path, capsys, monkeypatch):
    run_dir = make_run(tmp_path / "run")
    expect = ("--probe 513 exceeds the 512 images of the val split", "allowed: 2..512")
    assert_one_error_line(capsys, monkeypatch, str(run_dir), "--probe", "513", expect=expect)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "supernet"]


def test_tas_lora_run_is_analysed_with_its_mole_supernet(tmp_path):
    """A TAS-LoRA run: the analysis uses the `mole` stage's MoLE supernet; without one it says
    so in one error line, before writing anything."""
    pytest.importorskip("search_spaces.vit.mole", reason="the MoLE supernet is not in this tree")
    from orchestrator.stages.mole import mole_spec
    from trainables.supernets import build_supernet

    run_dir = make_run(tmp_path / "run", name="tas", method="tas-lora", mole=MOLE)
    with pytest.raises(UserInputError, match="no trained supernet"):
        analyze_collapse(run_dir, subnets=3, probe=32)
    assert not (run_dir / "analysis").exists()

    config = parse(tiny_run(run_dir, name="tas", method="tas-lora", mole=MOLE), "test")
    space = build_space(config.family, config.space.preset, dict(config.space.overrides))
    torch.manual_seed(1)
    mole = build_supernet(space, mole_spec(config))
    with torch.no_grad():  # B starts at zero: give the experts something to say
        for name, param in mole.named_parameters():
            if not name.startswith("base."):
                param.normal_(std=0.05)
    folder = save_stage(run_dir, "mole", mole.state_dict(), adapter=mole_spec(config))
    result = analyze_collapse(run_dir, subnets=3, probe=32)
    assert result["supernet"] == {"checkpoint": str(folder), "class": "MoleViTSupernet"}
    assert len(result["cka"]) == 3 and 0.0 <= result["mean_cka"] <= 1.0
    assert (output_dir(run_dir) / "cka.png").is_file()
