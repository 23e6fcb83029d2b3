"""Which subnets a training step runs, the same on every rank.

The generator of step `(epoch, step)` is derived from `(seed, epoch, step)` alone, so every
data-parallel rank draws the same architecture without communicating; otherwise DDP would
average gradients of different subnets.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from search_spaces import SearchSpace


def step_rng(seed: int, epoch: int, step: int, purpose: str = "train") -> random.Random:
    """A generator for one step; `random.Random(str)` hashes the string with SHA-512 (stable)."""
    return random.Random(f"raynas:{purpose}:{seed}:{epoch}:{step}")


def step_archs(
    space: SearchSpace,
    rule: Literal["uniform", "sandwich"],
    seed: int,
    epoch: int,
    step: int,
    purpose: str = "train",
) -> list[Any]:
    """The archs trained at `(epoch, step)`: one sampled arch, or largest + smallest + sampled.

    `purpose` separates the streams of different training stages (supernet, mole)."""
    purpose = "train" if purpose == "supernet" else purpose  # the supernet's historical stream
    sampled = space.sample(step_rng(seed, epoch, step, purpose))
    if rule == "sandwich":
        return [space.largest(), space.smallest(), sampled]
    return [sampled]


def eval_archs(space: SearchSpace, seed: int, k: int) -> dict[str, Any]:
    """The archs evaluated every epoch: smallest, largest and `k` fixed random ones."""
    rng = random.Random(f"raynas:eval:{seed}")
    archs = {"smallest": space.smallest(), "largest": space.largest()}
    archs.update({f"random{i}": space.sample(rng) for i in range(k)})
    return archs
