"""EvolutionSampler: AutoFormer's evolution as an Optuna sampler, on the vit-28 space.

Real Optuna studies (in-memory, one SQLite), driven the way Ray Tune's OptunaSearch drives them:
``study.ask(fixed_distributions=space.distributions())`` then ``study.tell``.
"""

from __future__ import annotations

import random
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.search.evolution import (
    DUPLICATE_KEY,
    GENERATION_KEY,
    INDEX_KEY,
    OPERATOR_KEY,
    PARENTS_KEY,
    EvolutionSampler,
    SearchExhaustedError,
)
from search_spaces import build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def space():
    return build_space("vit", "vit-28", {})


def _target(space, seed=123):
    c = space.config
    rng = random.Random(seed)
    heads = [rng.choice(c.num_heads) for _ in range(c.max_depth)]
    ratios = [rng.choice(c.mlp_ratios) for _ in range(c.max_depth)]
    return heads, ratios


def _score_fn(space):
    """Deterministic synthetic 'accuracy': matches to a hidden per-block target (deeper is
    better), plus a bonus for the middle embed width. Random draws rarely get near the top."""
    heads, ratios = _target(space)
    mid_embed = space.config.embed_dims[1]

    def score(arch):
        hits = sum(
            (h == heads[i]) + (r == ratios[i])
            for i, (h, r) in enumerate(zip(arch.num_heads, arch.mlp_ratio, strict=True))
        )
        return hits + 0.5 * (arch.embed_dim == mid_embed)

    return score


def _params_band(space, low_q, high_q):
    """``(constraint, violating fraction of random archs)`` for a params range between two
    quantiles of random archs' params."""
    params = sorted(space.cost(space.sample(random.Random(i)))["params"] for i in range(400))
    low, high = params[int(low_q * len(params))], params[int(high_q * len(params))]

    def constraint(arch):
        p = space.cost(arch)["params"]
        if p < low:
            return f"params={p} < {low}"
        if p > high:
            return f"params={p} > {high}"
        return None

    probe = [space.sample(random.Random(10_000 + i)) for i in range(300)]
    return constraint, sum(constraint(a) is not None for a in probe) / len(probe)


def _drive(study, space, n, objective, leave_running=()):
    """Ask/tell ``n`` trials like OptunaSearch; returns the asked archs in order. Trial numbers
    in ``leave_running`` are never told (they stay RUNNING)."""
    dists = space.distributions()
    archs = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=dists)
        arch = space.decode(trial.params)
        archs.append(arch)
        if trial.number in leave_running:
            continue
        study.tell(trial, objective(arch))
    return archs


def _tagged(study):
    return [t for t in study.get_trials(deepcopy=False) if GENERATION_KEY in t.system_attrs]


def _top(trials, k, space, *, maximize=True, objective=0):
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    sign = -1 if maximize else 1
    done.sort(key=lambda t: (sign * t.values[objective], t.number))
    return {t.number for t in done[:k]}


def _genes(space, arch):
    """The arch's own genes (padding excluded) as a dict."""
    genes = {"embed_dim": arch.embed_dim, "depth": arch.depth}
    for i in range(arch.depth):
        genes[f"num_heads_{i}"] = arch.num_heads[i]
        genes[f"mlp_ratio_{i}"] = arch.mlp_ratio[i]
    return genes


def _distance(space, a, b):
    ga, gb = _genes(space, a), _genes(space, b)
    return sum(ga.get(k) != gb.get(k) for k in set(ga) | set(gb))


# --------------------------------------------------------------------------------------------


def test_generations_parents_mutation_and_crossover(space):
    score = _score_fn(space)
    sampler = EvolutionSampler(space, population=10, parents=3, mutations=4, crossovers=4, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    _drive(study, space, 50, score)

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert [t.system_attrs[GENERATION_KEY] for t in trials] == [i // 10 for i in range(50)]
    assert [t.system_attrs[INDEX_KEY] for t in trials] == [i % 10 for i in range(50)]
    assert {t.system_attrs[OPERATOR_KEY] for t in trials[:10]} == {"random"}

    mutation_dist, random_dist, crossovers = [], [], 0
    for t in trials[10:]:
        g, i = t.system_attrs[GENERATION_KEY], t.system_attrs[INDEX_KEY]
        op, parents = t.system_attrs[OPERATOR_KEY], t.system_attrs[PARENTS_KEY]
        top = _top([u for u in trials if u.system_attrs[GENERATION_KEY] < g], 3, space)
        child = space.decode(t.params)
        if i < 4:
            assert op == "mutation" and len(parents) == 1 and set(parents) <= top
            parent = space.decode(by_number[parents[0]].params)
            assert child != parent
            mutation_dist.append(_distance(space, child, parent))
            random_dist.append(_distance(space, space.decode(trials[i].params), parent))
        elif i < 8:  # crossover; mutation without an equal-depth pair, random on shortfall
            assert op in ("crossover", "mutation", "random")
            assert set(parents) <= top and (op == "random") == (parents == [])
            if op == "crossover":
                crossovers += 1
                a, b = (space.decode(by_number[n].params) for n in parents)
                assert parents[0] != parents[1] and a.depth == b.depth
                ga, gb, gc = _genes(space, a), _genes(space, b), _genes(space, child)
                assert gc.keys() == ga.keys()
                assert all(gc[k] in (ga[k], gb[k]) for k in gc)
                assert child not in (a, b)
        else:
            assert op == "random" and parents == []
    assert crossovers >= 8
    # mutation changes few genes: far fewer than an unrelated random arch differs by
    assert statistics.mean(mutation_dist) < 0.6 * statistics.mean(random_dist)


def test_never_proposes_an_arch_outside_the_constraint(space):
    constraint, violating = _params_band(space, 0.2, 0.35)
    assert violating > 0.6  # the constraint is tight: most random archs break it
    sampler = EvolutionSampler(
        space, population=15, parents=4, mutations=6, crossovers=6, constraint=constraint, seed=3
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    archs = _drive(study, space, 75, _score_fn(space))
    assert [constraint(a) for a in archs] == [None] * 75
    operators = {t.system_attrs[OPERATOR_KEY] for t in _tagged(study)}
    assert {"mutation", "crossover", "random"} <= operators


def test_no_duplicates_even_with_running_trials_in_a_small_space():
    small = build_space(
        "vit",
        "vit-28",
        {"embed_dims": [48, 64], "depths": [3], "num_heads": [2, 3], "mlp_ratios": [2.0, 3.0]},
    )  # 2 * 4**3 = 128 archs: 100 random draws would repeat many
    rng = random.Random(0)
    assert len({small.sample(rng) for _ in range(100)}) < 90
    score = _score_fn(small)
    sampler = EvolutionSampler(small, population=20, parents=5, mutations=8, crossovers=8, seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    archs = _drive(study, small, 100, score, leave_running=set(range(3, 100, 7)))
    assert len(set(archs)) == 100
    assert sum(t.state == TrialState.RUNNING for t in study.get_trials()) == 14
    assert all(DUPLICATE_KEY not in t.system_attrs for t in study.get_trials())


def test_exhausted_space_gives_a_tagged_duplicate_then_all_rejected_raises():
    tiny = build_space(
        "vit",
        "vit-28",
        {"embed_dims": [48, 64], "depths": [3], "num_heads": [2], "mlp_ratios": [2.0]},
    )  # exactly 2 archs
    sampler = EvolutionSampler(
        tiny, population=4, parents=2, mutations=1, crossovers=1, seed=0, max_tries=30
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first = _drive(study, tiny, 2, lambda a: float(a.embed_dim))
    assert len(set(first)) == 2
    with pytest.warns(RuntimeWarning, match="duplicate"):
        third = _drive(study, tiny, 1, lambda a: 0.0)[0]
    last = study.get_trials()[-1]
    assert last.system_attrs[DUPLICATE_KEY] == first.index(third)

    never = EvolutionSampler(tiny, constraint=lambda a: "too big", seed=0, max_tries=10)
    study = optuna.create_study(direction="maximize", sampler=never)
    with pytest.raises(SearchExhaustedError, match="too big"):
        study.ask(fixed_distributions=tiny.distributions())


def test_beats_random_search_at_equal_budget(space):
    """Same budget (250 proposals), same params constraint, 5 seeds: evolution's best synthetic
    score beats that of random search (distinct random valid archs)."""
    constraint, _ = _params_band(space, 0.0, 0.5)
    score = _score_fn(space)
    budget, dists = 250, space.distributions()
    evo_best, random_best = [], []
    for seed in range(5):
        sampler = EvolutionSampler(space, constraint=constraint, seed=seed)  # AutoFormer defaults
        study = optuna.create_study(direction="maximize", sampler=sampler)
        archs = _drive(study, space, budget, score)
        assert all(constraint(a) is None for a in archs)
        evo_best.append(study.best_value)

        rng, seen = random.Random(seed), set()
        while len(seen) < budget:
            arch = space.sample(rng)
            if constraint(arch) is None:
                seen.add(arch)
        random_best.append(max(score(a) for a in seen))
        assert dists  # the same space for both
    assert sum(e > r for e, r in zip(evo_best, random_best, strict=True)) >= 4
    assert statistics.mean(evo_best) > statistics.mean(random_best) + 1.0


@pytest.mark.parametrize("directions", [["maximize", "minimize"], ["minimize"]])
def test_parents_ranked_by_objective_zero_in_its_direction(space, directions):
    score = _score_fn(space)
    maximize = directions[0] == "maximize"

    def objective(arch):
        params = float(space.cost(arch)["params"])
        return (score(arch), params) if len(directions) == 2 else score(arch)

    sampler = EvolutionSampler(space, population=12, parents=3, mutations=6, crossovers=6, seed=5)
    study = optuna.create_study(directions=directions, sampler=sampler)
    _drive(study, space, 24, objective)
    trials = study.get_trials(deepcopy=False)
    gen0 = trials[:12]
    top = _top(gen0, 3, space, maximize=maximize)
    # the check can fail: the other direction, or objective 1, would pick other parents
    assert top != _top(gen0, 3, space, maximize=not maximize)
    if len(directions) == 2:
        assert top != _top(gen0, 3, space, maximize=False, objective=1)
    used = {n for t in trials[12:] for n in t.system_attrs[PARENTS_KEY]}
    assert used and used <= top


def test_resume_with_a_new_sampler_continues_and_is_reproducible(space, tmp_path):
    score = _score_fn(space)
    kwargs = dict(population=6, parents=2, mutations=3, crossovers=2, seed=7)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="evo",
        storage=storage,
        direction="maximize",
        sampler=EvolutionSampler(space, **kwargs),
    )
    first = _drive(study, space, 9, score)
    del study
    random.seed(999)  # process-global state must not matter
    resumed = optuna.load_study(
        study_name="evo", storage=storage, sampler=EvolutionSampler(space, **kwargs)
    )
    second = _drive(resumed, space, 9, score)

    trials = resumed.get_trials(deepcopy=False)
    assert [t.system_attrs[GENERATION_KEY] for t in trials] == [i // 6 for i in range(18)]
    assert len(set(first + second)) == 18

    random.seed(1)
    straight = optuna.create_study(direction="maximize", sampler=EvolutionSampler(space, **kwargs))
    assert _drive(straight, space, 18, score) == first + second
    other_seed = optuna.create_study(
        direction="maximize", sampler=EvolutionSampler(space, **{**kwargs, "seed": 8})
    )
    assert _drive(other_seed, space, 18, score) != first + second


def test_ask_with_fixed_distributions_gives_the_encoded_arch(space):
    sampler = EvolutionSampler(space, population=4, parents=2, mutations=2, crossovers=2, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dists = space.distributions()
    for _ in range(8):
        trial = study.ask(fixed_distributions=dists)
        arch = space.decode(trial.params)
        assert trial.params == space.encode(arch)
        assert trial.distributions == dists
        # a parameter outside the space falls back to independent random sampling
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        assert 1e-4 <= lr <= 1e-2
        study.tell(trial, float(arch.depth))
    # the extra param does not hide the trials from the sampler: gen 1 has parents
    assert [t.system_attrs[OPERATOR_KEY] for t in study.get_trials()][4:6] == ["mutation"] * 2
    assert len({space.decode({k: t.params[k] for k in dists}) for t in study.get_trials()}) == 8


def test_rejects_inconsistent_sizes(space):
    with pytest.raises(ValueError, match="exceeds population"):
        EvolutionSampler(space, population=10, mutations=6, crossovers=5)
    with pytest.raises(ValueError, match="parents"):
        EvolutionSampler(space, parents=0)
