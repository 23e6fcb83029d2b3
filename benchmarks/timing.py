"""Shared by the benchmark scripts: the reference "middle" subnet and interleaved timing."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from search_spaces import SearchSpace


def middle_arch(space: SearchSpace, samples: int = 200, seed: int = 0) -> object:
    """The seeded sample whose parameter count is closest to the space's midpoint."""
    lo = space.cost(space.smallest())["params"]
    hi = space.cost(space.largest())["params"]
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(samples)]
    return min(archs, key=lambda a: abs(space.cost(a)["params"] - (lo + hi) / 2))


def timed(step: Callable[[], None]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant; the variants run in a rotating order in every repeat,
    so drift in the machine's load falls on all of them alike."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(steps[name]))
    return times
