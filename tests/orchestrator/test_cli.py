"""The installed `raynas` console script, run as a user runs it: exit codes and output.

Each run pays the command's start-up (Python, torch, the spaces) on one core: the module's runs
are started by one fixture, two at a time, so this process does not leave the second core idle;
each test reads the results of its own runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ITNAS = str(ROOT / "configs" / "quickstart-itnas.yaml")


def raynas(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("raynas")
    command = [str(script)] if script.exists() else [shutil.which("raynas") or "raynas"]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


RUNS_OF = {  # test -> the runs of the `runs` fixture it reads
    "test_validate_typo_exits_nonzero_with_one_line_naming_the_field": ["typo"],
    "test_validate_set_override_and_print": ["set-print", "set-bad"],
    "test_validate_missing_file": ["missing"],
    "test_data_inspect_fashion_mnist": ["inspect-fashion-mnist"],
    "test_data_inspect_from_config_and_bad_option": ["inspect-config", "inspect-bad-option"],
    "test_data_convert_then_inspect_parquet": ["convert-inspect"],
    "test_data_list_names_every_dataset": ["list"],
    "test_a_stage_outside_the_runs_stages_is_refused_in_one_line": ["stage-outside"],
    "test_retrain_arch_of_another_space_is_one_line": ["retrain-arch"],
}


def typo_config(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    data["search"]["budgte"] = data["search"].pop("budget")
    bad = folder / "typo.yaml"
    bad.write_text(yaml.safe_dump(data))
    return bad


def convert_then_inspect(out: Path) -> tuple[subprocess.CompletedProcess, ...]:
    """`data convert` twice into the same folder, then `data inspect` of what it wrote."""
    first = raynas("data", "convert", "digits", str(out))
    again = raynas("data", "convert", "digits", str(out))
    inspected = raynas("data", "inspect", "parquet", "--root", str(out))
    return first, again, inspected


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The subprocess runs of this module's selected tests (besides --help), started two at a
    time: name -> a future of its CompletedProcess (a tuple of them for dependent runs)."""
    work = tmp_path_factory.mktemp("cli")
    jobs = {
        # the slowest first, so the pair of workers is busy to the end
        "retrain-arch": lambda: raynas(
            "run", ITNAS, "-s", f"run_dir={work / 'retrain'}", "-s", "stages=[retrain]",
            "-s", "retrain.arch='|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|'",
        ),
        "convert-inspect": lambda: convert_then_inspect(work / "digits"),
        "inspect-config": lambda: raynas("data", "inspect", "--config", "configs/quickstart.yaml"),
        "inspect-bad-option": lambda: raynas("data", "inspect", "digits", "--val-size", "5000"),
        "stage-outside": lambda: raynas("search", ITNAS, "-s", f"run_dir={work / 'outside'}"),
        "set-print": lambda: raynas(
            "validate", "configs/quickstart.yaml", "--set", "search.budget=7", "--print"
        ),
        "set-bad": lambda: raynas("validate", "configs/quickstart.yaml", "-s", "search.budget=-3"),
        "inspect-fashion-mnist": lambda: raynas("data", "inspect", "fashion_mnist", "--no-download"),
        "typo": lambda: raynas("validate", str(typo_config(work))),
        "missing": lambda: raynas("validate", "configs/nope.yaml"),
        "list": lambda: raynas("data", "list"),
    }  # fmt: skip
    assert set(jobs) == {name for names in RUNS_OF.values() for name in names}
    selected = {item.name for item in request.session.items if item.module is request.module}
    wanted = [name for test, names in RUNS_OF.items() if test in selected for name in names]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures: dict[str, Future] = {
            name: pool.submit(job) for name, job in jobs.items() if name in wanted
        }
        yield {"work": work, **futures}
        for future in futures.values():  # none outlives the module
            future.cancel()


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


def test_validate_typo_exits_nonzero_with_one_line_naming_the_field(runs):
    bad = runs["work"] / "typo.yaml"
    result = runs["typo"].result()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad}: search.budgte: unknown key")
    assert "did you mean 'budget'?" in lines[0]
    assert "Traceback" not in result.stderr


def test_validate_set_override_and_print(runs):
    result = runs["set-print"].result()
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert printed["search"]["budget"] == 7
    bad = runs["set-bad"].result()
    assert bad.returncode == 1
    assert (
        bad.stderr.strip()
        == "error: configs/quickstart.yaml: search.budget: got -3; allowed: greater than or equal to 1"
    )


def test_validate_missing_file(runs):
    result = runs["missing"].result()
    assert result.returncode == 1
    assert result.stderr.strip() == "error: configs/nope.yaml: file not found"


def test_data_inspect_fashion_mnist(runs):
    result = runs["inspect-fashion-mnist"].result()
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split()[1]
        for line in result.stdout.splitlines()
        if line.split()[:1] in (["train"], ["val"], ["test"])
    }
    assert rows == {"train": "55000", "val": "5000", "test": "10000"}
    assert "image shape: 1x28x28" in result.stdout
    assert "classes: 10 (T-shirt/top" in result.stdout


def test_data_inspect_from_config_and_bad_option(runs):
    result = runs["inspect-config"].result()
    assert result.returncode == 0, result.stderr
    assert "fashion_mnist from" in result.stdout
    bad = runs["inspect-bad-option"].result()
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: data.val_size=5000 gives 5000 of 1438 images")


def test_data_convert_then_inspect_parquet(runs):
    result, again, inspected = runs["convert-inspect"].result()
    assert result.returncode == 0, result.stderr
    assert "train.parquet (1438 rows), test.parquet (359 rows)" in result.stdout
    assert again.returncode == 1 and "already exists" in again.stderr
    assert inspected.returncode == 0, inspected.stderr
    assert "image shape: 1x8x8" in inspected.stdout


def test_data_list_names_every_dataset(runs):
    result = runs["list"].result()
    assert result.returncode == 0
    for name in ("fashion_mnist", "digits", "cifar10", "cifar100", "imagefolder", "parquet"):
        assert name in result.stdout


def test_a_stage_outside_the_runs_stages_is_refused_in_one_line(runs):
    result = runs["stage-outside"].result()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: stage(s) search are not among this run's stages (supernet, select, retrain, "
        "export, report); list them in `stages:` (e.g. -s 'stages=[search]')"
    ]
    assert not (runs["work"] / "outside").exists()


def test_retrain_arch_of_another_space_is_one_line(runs):
    result = runs["retrain-arch"].result()
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: retrain.arch='|conv_9x9~0|") and "allowed" in line
    assert not (runs["work"] / "retrain" / "retrain" / "result.json").exists()
