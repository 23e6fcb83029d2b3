"""The Optuna sampler of each search strategy, and the hard constraints as a predicate."""

from __future__ import annotations

import hashlib
from typing import Any

from orchestrator.config.schema import SearchConfig


def constraint_of(search: SearchConfig, space: Any):
    """`arch -> reason | None` for the params/FLOPs ranges of `search.constraints`, or None."""
    ranges = {k: getattr(search.constraints, k) for k in ("params", "flops")}
    ranges = {k: r for k, r in ranges.items() if r is not None}
    if not ranges:
        return None

    def violation(arch: Any) -> str | None:
        cost = space.cost(arch)
        for key, bound in ranges.items():
            value = cost[key]
            if bound.min is not None and value < bound.min:
                return f"{key}={value} < min {bound.min:g}"
            if bound.max is not None and value > bound.max:
                return f"{key}={value} > max {bound.max:g}"
        return None

    return violation


def sampler_seed(seed: int, trials_so_far: int, salt: str = "") -> int:
    """A resumed study gets a fresh seed stream, so it does not replay its first proposals;
    `salt` (a driver's identity) gives drivers sharing one study streams of their own."""
    text = f"raynas-sampler:{seed}:{trials_so_far}" + (f":{salt}" if salt else "")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(
    search: SearchConfig,
    space: Any,
    seed: int,
    trials_so_far: int = 0,
    constraint=None,
    salt: str = "",
):
    """The Optuna sampler of `search.strategy` for a study that already holds `trials_so_far`.

    Optuna's samplers draw from one seeded stream, which a resumed study would replay, so they
    get a seed derived from (seed, trials so far, `salt`); the evolution sampler seeds each
    trial from (seed, trial number) itself, so a resumed evolution equals an uninterrupted one
    (and drivers sharing a study never share a trial number).
    """
    import optuna

    if search.strategy != "evolution":
        seed = sampler_seed(seed, trials_so_far, salt)

    if search.strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=search.evolution.population, seed=seed)
    if search.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if search.strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.strategy == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    from orchestrator.search.evolution import EvolutionSampler

    evo = search.evolution
    return EvolutionSampler(
        space,
        population=evo.population,
        parents=evo.parents,
        mutations=evo.mutations,
        crossovers=evo.crossovers,
        constraint=constraint,
        seed=seed,
    )
