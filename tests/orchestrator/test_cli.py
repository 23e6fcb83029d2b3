"""The installed `raynas` console script, run as a user runs it: exit codes and output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def raynas(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("raynas")
    command = [str(script)] if script.exists() else [shutil.which("raynas") or "raynas"]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_help_lists_the_commands():
    result = raynas("--help")
    assert result.returncode == 0
    for command in ("validate", "data", "run", "train", "search", "export", "report"):
        assert command in result.stdout
    assert raynas("--version").stdout.startswith("raynas ")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validate_shipped_configs_exits_zero(path):
    # the real command in this process (`raynas validate` as a subprocess is tested below):
    # one import of torch and the spaces for all shipped configs instead of one per config
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok {path}")


def test_validate_typo_exits_nonzero_with_one_line_naming_the_field(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    data["search"]["budgte"] = data["search"].pop("budget")
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = raynas("validate", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad}: search.budgte: unknown key")
    assert "did you mean 'budget'?" in lines[0]
    assert "Traceback" not in result.stderr


def test_validate_set_override_and_print(tmp_path):
    result = raynas("validate", "configs/quickstart.yaml", "--set", "search.budget=7", "--print")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert printed["search"]["budget"] == 7
    bad = raynas("validate", "configs/quickstart.yaml", "-s", "search.budget=-3")
    assert bad.returncode == 1
    assert (
        bad.stderr.strip()
        == "error: configs/quickstart.yaml: search.budget: got -3; allowed: greater than or equal to 1"
    )


def test_validate_missing_file():
    result = raynas("validate", "configs/nope.yaml")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: configs/nope.yaml: file not found"


def test_data_inspect_fashion_mnist():
    result = raynas("data", "inspect", "fashion_mnist", "--no-download")
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split()[1]
        for line in result.stdout.splitlines()
        if line.split()[:1] in (["train"], ["val"], ["test"])
    }
    assert rows == {"train": "55000", "val": "5000", "test": "10000"}
    assert "image shape: 1x28x28" in result.stdout
    assert "classes: 10 (T-shirt/top" in result.stdout


def test_data_inspect_from_config_and_bad_option():
    result = raynas("data", "inspect", "--config", "configs/quickstart.yaml")
    assert result.returncode == 0, result.stderr
    assert "fashion_mnist from" in result.stdout
    bad = raynas("data", "inspect", "digits", "--val-size", "5000")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: data.val_size=5000 gives 5000 of 1438 images")


def test_data_convert_then_inspect_parquet(tmp_path):
    out = tmp_path / "digits"
    result = raynas("data", "convert", "digits", str(out))
    assert result.returncode == 0, result.stderr
    assert "train.parquet (1438 rows), test.parquet (359 rows)" in result.stdout
    again = raynas("data", "convert", "digits", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr
    inspected = raynas("data", "inspect", "parquet", "--root", str(out))
    assert inspected.returncode == 0, inspected.stderr
    assert "image shape: 1x8x8" in inspected.stdout


def test_data_list_names_every_dataset():
    result = raynas("data", "list")
    assert result.returncode == 0
    for name in ("fashion_mnist", "digits", "cifar10", "cifar100", "imagefolder", "parquet"):
        assert name in result.stdout


def test_a_stage_outside_the_runs_stages_is_refused_in_one_line(tmp_path):
    result = raynas(
        "search", str(ROOT / "configs" / "quickstart-itnas.yaml"), "-s", f"run_dir={tmp_path / 'r'}"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: stage(s) search are not among this run's stages (supernet, select, retrain, "
        "export, report); list them in `stages:` (e.g. -s 'stages=[search]')"
    ]
    assert not (tmp_path / "r").exists()


def test_retrain_arch_of_another_space_is_one_line(tmp_path):
    result = raynas(
        "run",
        str(ROOT / "configs" / "quickstart-itnas.yaml"),
        "-s", f"run_dir={tmp_path / 'r'}",
        "-s", "stages=[retrain]",
        "-s", "retrain.arch='|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|'",
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: retrain.arch='|conv_9x9~0|") and "allowed" in line
    assert not (tmp_path / "r" / "retrain" / "result.json").exists()
