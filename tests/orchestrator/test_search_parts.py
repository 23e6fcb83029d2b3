"""The search stage's parts without Ray: archive file, Pareto front, the constrained searcher
(driven directly through Ray Tune's Searcher interface on a real Optuna storage), samplers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from orchestrator.config.schema import SearchConfig
from orchestrator.search.archive import Archive, ArchiveError, encoded_of, make_row
from orchestrator.search.evolution import EvolutionSampler
from orchestrator.search.pareto import dominates, hypervolume, pareto_front
from orchestrator.search.samplers import constraint_of, make_sampler, sampler_seed
from orchestrator.search.searcher import DRIVER_ATTR, ArchSearch, driver_identity
from orchestrator.stages.search import lost_node, reconcile, study_summary
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


def make_search(
    space, tmp_path, constraint=None, sampler=None, run: str = "", **kwargs
) -> ArchSearch:
    """A searcher on the study `s` in tmp_path/study.db; `run` names its own run directory
    (archive) there, so several searchers are drivers sharing one study."""
    (tmp_path / run).mkdir(exist_ok=True)
    return ArchSearch(
        space,
        objectives=["flops"],
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        study_name="s",
        archive=Archive(tmp_path / run / "archive.parquet"),
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
    # normalised by the reference (0 %, 50 FLOPs): a dominates (1 - 10/50) x 0.80 = 0.64,
    # b adds (1 - 20/50) x 0.05 = 0.03, d adds (1 - 40/50) x 0.05 = 0.01; c is dominated
    assert hypervolume(rows, ["flops"], {"flops": 50}) == pytest.approx(0.64 + 0.03 + 0.01)
    # over both costs c counts: it has the fewest params (more cases: test_hypervolume.py)
    ref = {"flops": 50, "params": 25}
    without_c = [r for r in rows if r["arch_id"] != "c"]
    assert hypervolume(rows, ["flops", "params"], ref) > hypervolume(
        without_c, ["flops", "params"], ref
    )


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


# ----------------------------------------------------- several drivers sharing one study
def test_two_drivers_share_the_budget_and_never_evaluate_an_arch_twice(tmp_path, space):
    a = make_search(space, tmp_path, run="a", budget=5)
    b = make_search(space, tmp_path, run="b", budget=5, sampler=optuna.samplers.RandomSampler(1))
    first = a.suggest("a0")  # running under a when b proposes the same arch
    a.study.enqueue_trial(first)
    b_first = b.suggest("b0")
    copy = [t for t in b.study.trials if t.user_attrs.get("claimed_by") == 0]
    assert b_first != first and len(copy) == 1 and copy[0].state == TrialState.PRUNED
    a.on_trial_complete("a0", result=fake_metrics(space, space.decode(first)))
    b.study.enqueue_trial(first)  # now evaluated by a: b answers it with a's values
    b_second = b.suggest("b1")
    dup = [t for t in b.study.trials if t.user_attrs.get("duplicate_of") == 0]
    assert len(dup) == 1 and dup[0].values == a.study.trials[0].values
    for search, tid, config in ((b, "b0", b_first), (b, "b1", b_second)):
        search.on_trial_complete(tid, result=fake_metrics(space, space.decode(config)))
    assert a.remaining(5) == b.remaining(5) == 2  # counted over the study, not the archive
    assert run_trials(a, space, 1) and run_trials(b, space, 5)  # b gets one, then FINISHED
    assert a.suggest("late") == Searcher.FINISHED and a.budget_met()
    ids = [{r["arch_id"] for r in s.archive.rows} for s in (a, b)]
    assert len(ids[0]) == 2 and len(ids[1]) == 3 and not ids[0] & ids[1]
    summary = study_summary(a.study.get_trials())
    assert summary["evaluated"] == 5 and summary["running"] == 0
    assert sorted(c["evaluated"] for c in summary["drivers"].values()) == [2, 3]


def test_a_driver_waits_for_a_lower_trial_still_being_decided(tmp_path, space):
    b = make_search(space, tmp_path, run="b", budget=5)
    lower = b.study.ask(fixed_distributions=b._space)  # another driver's, still sampling
    lower.set_user_attr(DRIVER_ATTR, {"host": "elsewhere", "pid": 1, "run_dir": "/r"})
    b.study.enqueue_trial(lower.params)  # b's next proposal: the same arch
    aid = space.arch_id(space.decode(lower.params))

    def decide_later():  # once b has its own trial, the other driver claims the arch
        deadline = time.monotonic() + 30
        while len(b.study.get_trials()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        lower.set_user_attr("arch_id", aid)

    other = threading.Thread(target=decide_later)
    other.start()
    config = b.suggest("b0")
    other.join()
    assert space.arch_id(space.decode(config)) != aid
    assert b.study.trials[1].user_attrs["claimed_by"] == 0  # the lower number won

    # one that stays undecided (its driver died mid-ask on another host) stops being waited for
    stale = b.study.ask(fixed_distributions=b._space)
    b.claim_wait = 0.3
    started = time.monotonic()
    assert b.suggest("b1") not in (None, Searcher.FINISHED)
    assert 0.3 <= time.monotonic() - started < 10 and "arch_id" not in stale.user_attrs


def test_reconcile_in_a_shared_study_closes_only_provably_abandoned_trials(tmp_path, space):
    search = make_search(space, tmp_path, run="me")
    me = driver_identity(tmp_path / "me")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = socket.gethostname()
    owners = {
        "own": {**me, "pid": me["pid"] + 1},  # an earlier driver of this run dir
        "dead": {"host": host, "pid": int(gone.stdout), "run_dir": str(tmp_path / "x")},
        "remote": {"host": "another-host", "pid": 1, "run_dir": str(tmp_path / "me")},
        "live": {"host": host, "pid": me["pid"], "run_dir": str(tmp_path / "y")},
        "unknown": None,
    }
    for owner in owners.values():
        trial = search.study.ask(fixed_distributions=search._space)
        if owner is not None:
            trial.set_user_attr(DRIVER_ATTR, owner)
    closed = reconcile(search.study, search.archive, ["val_top1", "flops"], me)
    states = [t.state for t in search.study.trials]
    assert closed == 2
    assert states == [TrialState.FAIL, TrialState.FAIL] + [TrialState.RUNNING] * 3
    assert reconcile(search.study, search.archive, ["val_top1", "flops"]) == 3  # not shared


def test_drivers_sharing_a_study_get_seed_streams_of_their_own():
    assert sampler_seed(0, 0, "host:/a") != sampler_seed(0, 0, "host:/b")
    assert sampler_seed(0, 0, "") == sampler_seed(0, 0)


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
