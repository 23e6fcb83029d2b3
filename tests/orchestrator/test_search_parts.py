"""The search stage's parts without Ray: archive file, Pareto front, the constrained searcher
(driven directly through Ray Tune's Searcher interface on a real Optuna storage), samplers."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from orchestrator.config.schema import SearchConfig
from orchestrator.search.archive import Archive, ArchiveError, encoded_of, make_row
from orchestrator.search.evolution import EvolutionSampler
from orchestrator.search.pareto import dominates, hypervolume_2d, pareto_front
from orchestrator.search.samplers import constraint_of, make_sampler, sampler_seed
from orchestrator.search.searcher import ArchSearch
from orchestrator.stages.search import lost_node, reconcile
from search_spaces import build_space
from tests.helpers.configs import SMALL_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def space():
    return build_space("vit", "vit-28", SMALL_SPACE)


def fake_metrics(space, arch) -> dict:
    """What an evaluation trial reports, from a cheap deterministic score (no forward pass)."""
    cost = space.cost(arch)
    return {
        "val_top1": 50.0 + cost["params"] / 1e4,
        "val_loss": 1.0,
        **cost,
        "start_time": 1.0,
        "end_time": 2.5,
        "pid": 1,
    }


def make_search(space, tmp_path, constraint=None, sampler=None, **kwargs) -> ArchSearch:
    return ArchSearch(
        space,
        objectives=["flops"],
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        study_name="s",
        archive=Archive(tmp_path / "archive.parquet"),
        constraint=constraint,
        **kwargs,
    )


def run_trials(search: ArchSearch, space, n: int) -> list[dict]:
    configs = []
    for i in range(n):
        config = search.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        configs.append(config)
        search.on_trial_complete(f"t{i}", result=fake_metrics(space, space.decode(config)))
    return configs


# ---------------------------------------------------------------------------------- archive
def test_archive_round_trip_and_atomic_write(tmp_path, space):
    archive = Archive(tmp_path / "a.parquet")
    for trial, arch in enumerate([space.smallest(), space.largest()]):
        archive.add(
            make_row(trial, space.arch_id(arch), space.to_json(arch), space.encode(arch),
                     fake_metrics(space, arch))
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]  # no temporary left
    again = Archive.load(tmp_path / "a.parquet")
    assert len(again) == 2 and space.arch_id(space.largest()) in again
    row = again.rows[1]
    assert row["eval_seconds"] == 1.5 and row["trial"] == 1
    assert space.decode(encoded_of(row)) == space.largest()


def test_a_damaged_archive_is_one_clear_error(tmp_path):
    path = tmp_path / "archive.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(ArchiveError, match="not a readable archive"):
        Archive.load(path)
    assert len(Archive.load(tmp_path / "missing.parquet")) == 0


# ---------------------------------------------------------------------------------- pareto
def test_pareto_front_and_hypervolume_on_known_points():
    rows = [
        {"arch_id": "a", "val_top1": 80.0, "flops": 10, "params": 5},
        {"arch_id": "b", "val_top1": 85.0, "flops": 20, "params": 9},
        {"arch_id": "c", "val_top1": 84.0, "flops": 25, "params": 4},  # dominated in flops
        {"arch_id": "d", "val_top1": 90.0, "flops": 40, "params": 20},
    ]
    assert [r["arch_id"] for r in pareto_front(rows, ["flops"])] == ["a", "b", "d"]
    assert [r["arch_id"] for r in pareto_front(rows, ["flops", "params"])] == ["a", "b", "c", "d"]
    assert dominates((1, 1), (1, 2)) and not dominates((1, 1), (1, 1))
    # reference 40: a adds 30*80, b adds 20*5, d adds 0
    assert hypervolume_2d(rows) == pytest.approx(30 * 80 + 20 * 5)


# ---------------------------------------------------------------------------------- searcher
def test_searcher_rejects_constraint_violations_before_any_trial(tmp_path, space):
    cap = (space.cost(space.smallest())["flops"] + space.cost(space.largest())["flops"]) // 2
    search = make_search(
        space, tmp_path, constraint=lambda a: "too big" if space.cost(a)["flops"] > cap else None
    )
    configs = run_trials(search, space, 10)
    assert len(configs) == 10 and all(space.cost(space.decode(c))["flops"] <= cap for c in configs)
    pruned = search.study.get_trials(states=(TrialState.PRUNED,))
    assert search.rejected == len(pruned) > 0
    assert all(t.user_attrs["rejected"] == "too big" for t in pruned)
    assert len(search.archive) == 10


def test_searcher_answers_duplicates_from_the_archive(tmp_path, space):
    search = make_search(space, tmp_path)
    run_trials(search, space, 3)
    first = search.archive.rows[0]
    search.study.enqueue_trial(encoded_of(first))  # the sampler proposes an evaluated arch
    config = search.suggest("next")
    assert space.arch_id(space.decode(config)) != first["arch_id"]
    duplicate = [t for t in search.study.trials if "duplicate_of" in t.user_attrs]
    assert len(duplicate) == 1 and duplicate[0].user_attrs["duplicate_of"] == first["trial"]
    assert duplicate[0].values == [first["val_top1"], first["flops"]]
    assert search.duplicates == 1 and len(search.archive) == 3


def test_searcher_never_hands_out_an_arch_being_evaluated(tmp_path, space):
    search = make_search(space, tmp_path)
    running = search.suggest("a")
    search.study.enqueue_trial(running)
    other = search.suggest("b")
    assert other != running
    assert [t.state for t in search.study.trials].count(TrialState.PRUNED) == 1


def test_searcher_stops_when_nothing_admissible_is_left(tmp_path, space):
    search = make_search(space, tmp_path, constraint=lambda a: "never", max_rejections=20)
    assert search.suggest("a") == Searcher.FINISHED and search.exhausted
    assert search.rejected == 20


def test_archive_is_written_before_the_study_is_told(tmp_path, space):
    search = make_search(space, tmp_path)
    config = search.suggest("a")
    seen = {}

    def check(row):  # called after the archive write, before tell
        seen["archived"] = row["arch_id"] in Archive.load(tmp_path / "archive.parquet")
        seen["state"] = search.study.trials[-1].state

    search.on_evaluated = check
    search.on_trial_complete("a", result=fake_metrics(space, space.decode(config)))
    assert seen == {"archived": True, "state": TrialState.RUNNING}
    assert search.study.trials[-1].state == TrialState.COMPLETE


def test_reconcile_closes_trials_a_dead_driver_left_running(tmp_path, space):
    search = make_search(space, tmp_path)
    done = search.suggest("a")
    search.archive.add(
        make_row(
            0,
            space.arch_id(space.decode(done)),
            space.to_json(space.decode(done)),
            done,
            fake_metrics(space, space.decode(done)),
        )
    )  # fmt: skip  (the archive row landed, the tell did not)
    search.suggest("b")  # never evaluated
    closed = reconcile(search.study, search.archive, ["val_top1", "flops"])
    states = [t.state for t in search.study.trials]
    assert closed == 2 and states == [TrialState.COMPLETE, TrialState.FAIL]


# ---------------------------------------------------------------------------------- samplers
def test_each_strategy_gets_its_sampler(space):
    kinds = {
        "nsga2": optuna.samplers.NSGAIISampler,
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "evolution": EvolutionSampler,
    }
    for strategy, kind in kinds.items():
        assert isinstance(make_sampler(SearchConfig(strategy=strategy), space, 0), kind)
    assert sampler_seed(0, 0) != sampler_seed(0, 10)


def test_constraint_names_the_bound(space):
    cost = space.cost(space.largest())
    check = constraint_of(SearchConfig(constraints={"params": {"max": cost["params"] - 1}}), space)
    assert check(space.largest()) == f"params={cost['params']} > max {cost['params'] - 1:g}"
    assert check(space.smallest()) is None
    assert constraint_of(SearchConfig(), space) is None


def test_only_a_lost_node_or_worker_earns_a_trial_another_round():
    from ray import exceptions as rex

    def raised_in_task(cause):
        return rex.RayTaskError("evaluate_candidate", "Traceback ...", cause)

    died = rex.ActorDiedError()
    assert lost_node(died) and lost_node(rex.ActorUnavailableError("gone", b"a" * 16))
    assert lost_node(rex.NodeDiedError("node 1 died")) and lost_node(rex.WorkerCrashedError())
    assert lost_node(raised_in_task(died))  # a probe actor that died under the trial
    assert not lost_node(raised_in_task(ValueError("bad arch")))
    assert not lost_node(ValueError("bad arch"))
    assert not lost_node(rex.OutOfMemoryError("killed by the memory monitor"))
