"""AutoFormer's evolutionary search as an Optuna sampler (DESIGN.md sections 3 and 4.1).

The sampler keeps no search state of its own: everything is derived from the study's trials on
each ask, so it works with parallel workers (e.g. Ray Tune's ``OptunaSearch``) and a study that is
resumed with a fresh sampler instance continues where it stopped.

* Every trial the sampler proposes is tagged with system attrs: ``evolution:generation``,
  ``evolution:index`` (position in the generation), ``evolution:operator`` (``"random"``,
  ``"mutation"`` or ``"crossover"``: the operator that actually made the arch) and
  ``evolution:parents`` (trial numbers of the parents, possibly empty).
* The position of a new trial is the number of trials already tagged; ``generation = position //
  population``. Generation 0 is random. In a later generation ``g`` the parents are the top
  ``parents`` distinct, admissible archs among COMPLETE trials that were not proposed in
  generation ``g`` or later (the global archive: earlier generations plus trials from elsewhere,
  e.g. enqueued ones), ranked by objective 0 in the study's direction for it. Positions
  ``[0, mutations)`` mutate a random parent, ``[mutations, mutations + crossovers)`` cross two
  parents of equal depth, the rest are random.
* A candidate is rejected before evaluation when ``constraint(arch)`` gives a reason or when
  its arch was already proposed in the study (any trial state). After ``max_tries`` rejections
  an operator gives way to random sampling (crossover without an equal-depth pair of parents
  gives way to mutation first).
* Exhaustion: when ``max_tries`` random draws give no admissible new arch, the sampler returns
  an admissible arch that is already in the study and tags the trial with
  ``evolution:duplicate_of`` (the trial number holding it), with a warning. When not a single
  draw satisfies the constraint it raises :class:`SearchExhaustedError`. It never returns an
  arch that violates the constraint.

Randomness: each trial uses its own ``random.Random`` seeded from ``(seed, trial.number)``, so a
study resumed with the same seed proposes what an uninterrupted one would, and nothing depends
on process-global random state.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from orchestrator.errors import UserInputError

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

Constraint = Callable[[Any], "str | None"]

GENERATION_KEY = "evolution:generation"
INDEX_KEY = "evolution:index"
OPERATOR_KEY = "evolution:operator"
PARENTS_KEY = "evolution:parents"
DUPLICATE_KEY = "evolution:duplicate_of"

_MEMO_LIMIT = 200_000


class SearchExhaustedError(UserInputError):
    """No arch that satisfies the hard constraints could be drawn."""


class EvolutionSampler(BaseSampler):
    """AutoFormer's evolution over a :class:`search_spaces.base.SearchSpace` (see module doc).

    Args:
        space: the search space; params are ``space.encode(arch)`` over
            ``space.distributions()``.
        population: trials per generation.
        parents: how many top archs are kept as parents.
        mutations: mutation children at the start of each generation after the first.
        crossovers: crossover children after the mutations; ``mutations + crossovers`` must not
            exceed ``population`` (the remaining positions are random).
        constraint: ``arch -> reason | None``; archs with a reason are never proposed.
        seed: base seed of the per-trial generators; ``None`` draws one from the OS.
        max_tries: candidates an operator may draw before it gives way (see module doc).
    """

    def __init__(
        self,
        space: Any,
        *,
        population: int = 50,
        parents: int = 10,
        mutations: int = 25,
        crossovers: int = 25,
        constraint: Constraint | None = None,
        seed: int | None = None,
        max_tries: int = 200,
    ) -> None:
        for name, value, low in (
            ("population", population, 1),
            ("parents", parents, 1),
            ("mutations", mutations, 0),
            ("crossovers", crossovers, 0),
            ("max_tries", max_tries, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= {low}")
        if mutations + crossovers > population:
            raise ValueError(
                f"mutations={mutations} + crossovers={crossovers} exceeds population="
                f"{population}; allowed: mutations + crossovers <= population"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed!r} is not allowed; allowed: an integer or None")
        self.space = space
        self.population = population
        self.parents = parents
        self.mutations = mutations
        self.crossovers = crossovers
        self.constraint = constraint
        self.max_tries = max_tries
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(63)
        self._distributions = dict(space.distributions())
        self._random_sampler = RandomSampler(seed=seed)
        self._decoded: dict[Hashable, Any] = {}  # memo: params -> arch (None if undecodable)

    # ---- BaseSampler ---------------------------------------------------------------------------
    def reseed_rng(self) -> None:
        """Reseed the fallback sampler; evolution itself draws per trial from ``(seed, number)``,
        so parallel threads never share a stream and the seed is kept for reproducibility."""
        self._random_sampler.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = study._get_trials(deepcopy=False, use_cache=True)
        others = [t for t in trials if t.number != trial.number]
        if GENERATION_KEY in trial.system_attrs:
            generation = trial.system_attrs[GENERATION_KEY]
            index = trial.system_attrs.get(INDEX_KEY, 0)
        else:
            produced = sum(1 for t in others if GENERATION_KEY in t.system_attrs)
            generation, index = divmod(produced, self.population)

        seen: dict[Any, int] = {}
        for t in others:
            arch = self._decode(t.params)
            if arch is not None:
                seen.setdefault(arch, t.number)
        rng = random.Random(f"raynas-evolution:{self.seed}:{trial.number}")
        parents = self._select_parents(study, others, generation) if generation > 0 else []

        arch, operator, parent_numbers, duplicate_of = self._propose(rng, index, parents, seen)

        storage, trial_id = study._storage, trial._trial_id
        storage.set_trial_system_attr(trial_id, GENERATION_KEY, generation)
        storage.set_trial_system_attr(trial_id, INDEX_KEY, index)
        storage.set_trial_system_attr(trial_id, OPERATOR_KEY, operator)
        storage.set_trial_system_attr(trial_id, PARENTS_KEY, parent_numbers)
        if duplicate_of is not None:
            storage.set_trial_system_attr(trial_id, DUPLICATE_KEY, duplicate_of)
        return self.space.encode(arch)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # Only for parameters outside the space's encoding.
        return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._random_sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._random_sampler.after_trial(study, trial, state, values)

    # ---- evolution ------------------------------------------------------------------------------
    def _select_parents(
        self, study: Study, trials: list[FrozenTrial], generation: int
    ) -> list[tuple[Any, int]]:
        """Top ``parents`` distinct admissible (arch, trial number) of the archive before
        ``generation``, best first by objective 0."""
        evaluated = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE
            and t.values
            and t.system_attrs.get(GENERATION_KEY, -1) < generation
        ]
        sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
        evaluated.sort(key=lambda t: (sign * t.values[0], t.number))
        chosen: list[tuple[Any, int]] = []
        taken: set[Any] = set()
        for t in evaluated:
            arch = self._decode(t.params)
            if arch is None or arch in taken or self._violation(arch) is not None:
                continue
            taken.add(arch)
            chosen.append((arch, t.number))
            if len(chosen) == self.parents:
                break
        return chosen

    def _propose(
        self,
        rng: random.Random,
        index: int,
        parents: list[tuple[Any, int]],
        seen: dict[Any, int],
    ) -> tuple[Any, str, list[int], int | None]:
        """(arch, operator, parent trial numbers, duplicate_of) for position ``index``."""
        if parents and index < self.mutations + self.crossovers:
            if index >= self.mutations:
                found = self._crossover(rng, parents, seen)
                if found is not None:
                    return (*found, None)
            if index < self.mutations or not _equal_depth_pairs(parents):
                found = self._mutation(rng, parents, seen)
                if found is not None:
                    return (*found, None)
        return self._random(rng, seen)

    def _mutation(
        self, rng: random.Random, parents: list[tuple[Any, int]], seen: dict[Any, int]
    ) -> tuple[Any, str, list[int]] | None:
        for _ in range(self.max_tries):
            parent, number = rng.choice(parents)
            child = self.space.mutate(parent, rng)
            if self._admissible(child, seen):
                return child, "mutation", [number]
        return None

    def _crossover(
        self, rng: random.Random, parents: list[tuple[Any, int]], seen: dict[Any, int]
    ) -> tuple[Any, str, list[int]] | None:
        groups = _equal_depth_pairs(parents)
        if not groups:
            return None
        eligible = [(parent, group) for group in groups for parent in group]
        for _ in range(self.max_tries):
            (a, na), group = rng.choice(eligible)
            b, nb = rng.choice([p for p in group if p[1] != na])
            child = self.space.crossover(a, b, rng)
            if self._admissible(child, seen):
                return child, "crossover", [na, nb]
        return None

    def _random(
        self, rng: random.Random, seen: dict[Any, int]
    ) -> tuple[Any, str, list[int], int | None]:
        duplicate = None
        reasons: dict[str, int] = {}
        for _ in range(self.max_tries):
            arch = self.space.sample(rng)
            reason = self._violation(arch)
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            if arch not in seen:
                return arch, "random", [], None
            if duplicate is None:
                duplicate = arch
        if duplicate is not None:
            warnings.warn(
                f"EvolutionSampler: {self.max_tries} random draws gave no admissible arch that is "
                f"new to the study; proposing a duplicate of trial {seen[duplicate]} (system attr "
                f"{DUPLICATE_KEY!r})",
                RuntimeWarning,
                stacklevel=2,
            )
            return duplicate, "random", [], seen[duplicate]
        common = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
        raise SearchExhaustedError(
            f"none of {self.max_tries} random archs satisfies the search constraints (most "
            f"common reasons: {', '.join(f'{r} ({n}x)' for r, n in common)}); widen the "
            "params/FLOPs ranges or raise max_tries"
        )

    # ---- helpers ---------------------------------------------------------------------------------
    def _violation(self, arch: Any) -> str | None:
        return None if self.constraint is None else self.constraint(arch)

    def _admissible(self, arch: Any, seen: dict[Any, int]) -> bool:
        return arch not in seen and self._violation(arch) is None

    def _decode(self, params: dict[str, Any]) -> Any:
        """The arch of a trial's params (other params ignored), or None when they lack a key of
        the space (still being set, or from another space) or do not decode."""
        try:
            flat = {name: params[name] for name in self._distributions}
        except KeyError:
            return None
        try:
            key: Hashable = tuple(flat.values())
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in self._decoded:
            return self._decoded[key]
        try:
            arch = self.space.decode(flat)
        except (ValueError, TypeError, KeyError):
            arch = None
        if key is not None:
            if len(self._decoded) >= _MEMO_LIMIT:
                self._decoded.clear()
            self._decoded[key] = arch
        return arch


def _pairing_key(arch: Any) -> Any:
    """Crossover pairs parents with equal keys: the depth where the arch has one (AutoFormer)."""
    return getattr(arch, "depth", None)


def _equal_depth_pairs(parents: list[tuple[Any, int]]) -> list[list[tuple[Any, int]]]:
    """Groups of at least two parents that share a pairing key, in parent order."""
    groups: dict[Any, list[tuple[Any, int]]] = {}
    for parent in parents:
        groups.setdefault(_pairing_key(parent[0]), []).append(parent)
    return [group for group in groups.values() if len(group) >= 2]
