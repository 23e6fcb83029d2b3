"""The in-process runner (``search.runner``) against Ray Tune: NAS-Bench-201 cells scored by the
table, the same seed and budget, once through Ray Tune (one worker: with several, the order
in which trials end, and so what an adaptive sampler proposes next, depends on timing) and
once in this process. Both must leave the same study (params, values, states, attrs) and the
same archive rows, apart from wall-clock times and where a candidate ran."""

from __future__ import annotations

from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState
from pydantic import ValidationError

from orchestrator.config import parse
from orchestrator.config.schema import SearchConfig
from orchestrator.pipeline import run_stages
from orchestrator.search.archive import Archive
from orchestrator.search.inprocess import CandidateError, run_inprocess
from orchestrator.search.searcher import DRIVER_ATTR, build_searcher
from search_spaces import build_space
from tests.helpers.servers import local_ray

optuna.logging.set_verbosity(optuna.logging.WARNING)

CELL = {"channels": 4, "cells_per_stage": 1}
BUDGET = 20
# when and where a candidate was evaluated: a Tune worker's pid and Ray node, or this process
PLACE_COLUMNS = {"start_time", "end_time", "eval_seconds", "pid", "node", "node_group"}


def table_search(run_dir: Path, tracking: str, strategy: str, **search) -> dict:
    return {
        "name": "nb201-table",
        "method": "it-nas",
        "run_dir": str(run_dir),
        "seed": 3,
        "stages": ["search"],
        "data": {"name": "fashion_mnist", "download": False, "subset": {"val": 256}},
        "space": {"preset": "nb201-28", "overrides": dict(CELL)},
        "search": {
            "evaluator": "table", "strategy": strategy, "budget": BUDGET,
            "evolution": {"population": 6, "parents": 3, "mutations": 3, "crossovers": 3},
            "resources": {"workers": 1, "cpus_per_worker": 1}, **search,
        },
        "tracking": {"uri": tracking, "experiment": "tests-inprocess"},
    }  # fmt: skip


def study_of(run_dir: Path) -> list[tuple]:
    study = optuna.load_study(study_name="nb201-table", storage=f"sqlite:///{run_dir}/study.db")
    return [
        (
            t.number,
            t.state,
            t.params,
            t.values,
            {k: v for k, v in t.user_attrs.items() if k != DRIVER_ATTR},  # names the run dir
            t.system_attrs,
        )
        for t in study.get_trials(deepcopy=False)
    ]


def archive_of(run_dir: Path) -> list[dict]:
    rows = pq.read_table(run_dir / "archive.parquet").to_pylist()
    return [{k: v for k, v in r.items() if k not in PLACE_COLUMNS} for r in rows]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Per strategy, the run directory of a Tune search (1 worker) and of an in-process one."""
    root = tmp_path_factory.mktemp("inprocess")
    tracking = f"sqlite:///{root / 'mlflow.db'}"  # one MLflow store: its schema is made once
    runs: dict[str, dict[str, Path]] = {}
    outcomes = {}
    with local_ray():
        for strategy in ("evolution", "random"):
            runs[strategy] = {}
            for runner in ("tune", "auto"):
                run_dir = root / f"{strategy}-{runner}"
                config = parse(table_search(run_dir, tracking, strategy, runner=runner), "test")
                outcomes[strategy, runner] = run_stages(config)["search"]
                runs[strategy][runner] = run_dir
    return {"runs": runs, "outcomes": outcomes, "tracking": tracking}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["evolution", "random"])
def test_inprocess_gives_the_study_and_archive_tune_gives(searched, strategy):
    tune_run, inprocess_run = searched["runs"][strategy]["tune"], searched["runs"][strategy]["auto"]
    assert searched["outcomes"][strategy, "tune"]["runner"] == "tune"
    assert searched["outcomes"][strategy, "auto"]["runner"] == "inprocess"  # auto, for a table
    assert not (inprocess_run / "search" / "tune").exists()  # no Ray Tune run at all
    trials = study_of(inprocess_run)
    assert trials == study_of(tune_run)
    complete = [t for t in trials if t[1] == TrialState.COMPLETE and "duplicate_of" not in t[4]]
    assert len(complete) == BUDGET
    if strategy == "evolution":  # later generations were bred, not drawn
        assert {t[5].get("evolution:operator") for t in trials} >= {"mutation", "crossover"}
    rows = archive_of(inprocess_run)
    assert rows == archive_of(tune_run) and len(rows) == BUDGET
    assert all(r["device"] == "table:baseline_accuracy" for r in rows)


@pytest.mark.slow
def test_the_runner_does_not_change_the_stage_fingerprint(searched, capsys):
    run_dir = searched["runs"]["random"]["auto"]
    data = table_search(run_dir, searched["tracking"], "random", runner="tune")
    again = run_stages(parse(data, "test"))["search"]
    assert "[search] up to date; skipping" in capsys.readouterr().out
    assert again["runner"] == "inprocess"  # the finished result, not re-run under Tune


# --------------------------------------------------------------------------- without Ray
def test_runner_choice_is_validated_and_auto_picks_inprocess_for_tables_only():
    assert SearchConfig(evaluator="table").resolved_runner == "inprocess"
    assert SearchConfig(evaluator="supernet").resolved_runner == "tune"
    assert SearchConfig(evaluator="table", measure_latency=True).resolved_runner == "tune"
    assert SearchConfig(evaluator="table", runner="tune").resolved_runner == "tune"
    with pytest.raises(ValidationError, match="runner=inprocess with evaluator='supernet'"):
        SearchConfig(evaluator="supernet", runner="inprocess")
    with pytest.raises(ValidationError, match="runner=inprocess cannot time candidates"):
        SearchConfig(evaluator="table", runner="inprocess", objectives=["flops", "latency"])


def test_a_failing_evaluation_is_told_fail_and_raised(tmp_path):
    space = build_space("cell", "nb201-28", CELL)
    search = SearchConfig(strategy="random", evaluator="table", budget=3)
    archive = Archive(tmp_path / "archive.parquet")
    searcher = build_searcher(
        search, space, 0, storage=optuna.storages.InMemoryStorage(), study_name="s",
        archive=archive,
    )  # fmt: skip
    calls = []

    def evaluate(config):
        calls.append(config)
        if len(calls) == 2:
            raise RuntimeError("broken table")
        return {"val_top1": 90.0, **space.cost(space.decode(config))}

    with pytest.raises(CandidateError, match="trial 1 .* raised RuntimeError: broken table"):
        run_inprocess(searcher, evaluate, search.budget)
    states = [t.state for t in searcher.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL] and len(archive) == 1
    # what the archive holds was evaluated once; the loop resumes with the rest of the budget
    assert run_inprocess(searcher, lambda c: {"val_top1": 91.0, "flops": 1}, 3) == 2
    assert len(archive) == 3 and archive.path.exists()
