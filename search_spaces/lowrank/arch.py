"""A low-rank subnet: per block, one rank ratio for each low-rank layer."""

from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.lowrank.config import LowRankSpaceConfig


@dataclasses.dataclass(frozen=True)
class LowRankArch:
    """``ranks[b]`` holds block b's ratios, one per entry of the space's ``layers``, in that
    order (FLORA: ``(r_qkv, r_fc1, r_fc2)``); the space binds them to layers by name. Lists
    become tuples and ints floats on construction, so an arch read back from JSON equals (and
    hashes like) the one written."""

    ranks: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        if isinstance(self.ranks, (list, tuple)):
            object.__setattr__(
                self,
                "ranks",
                tuple(
                    tuple(_as_float(r) for r in block)
                    if isinstance(block, (list, tuple))
                    else block
                    for block in self.ranks
                ),
            )


def _as_float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def validate_lowrank_arch(arch: Any, config: LowRankSpaceConfig) -> None:
    """Raise ``ValueError`` naming the first offending field and what is allowed."""
    if not isinstance(arch, LowRankArch):
        raise ValueError(f"arch must be a LowRankArch, got {type(arch).__name__}")
    ranks = arch.ranks
    if not isinstance(ranks, tuple) or len(ranks) != config.depth:
        shown = len(ranks) if isinstance(ranks, tuple) else type(ranks).__name__
        raise ValueError(
            f"ranks must have one entry per block: got {shown}; allowed: {config.depth} tuples "
            f"of {len(config.layers)} ratios ({', '.join(config.layers)})"
        )
    for b, choice in enumerate(ranks):
        if not isinstance(choice, tuple) or len(choice) != len(config.layers):
            raise ValueError(
                f"ranks[{b}]={choice!r}; allowed: {len(config.layers)} ratios "
                f"({', '.join(config.layers)}) out of {list(config.rank_ratios)}"
            )
        for r in choice:
            if isinstance(r, bool) or not isinstance(r, float) or r not in config.rank_ratios:
                raise ValueError(
                    f"ranks[{b}] ratio {r!r} is not allowed; allowed: {list(config.rank_ratios)}"
                )
        if config.allowed is not None and choice not in config.allowed[b]:
            raise ValueError(
                f"ranks[{b}]={list(choice)} was filtered out of block {b}; allowed: "
                f"{[list(c) for c in config.allowed[b]]}"
            )
