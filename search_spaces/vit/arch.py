"""A ViT subnet: one embedding width, a depth, and per block a head count and an MLP ratio."""

from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.vit.config import ViTSpaceConfig


@dataclasses.dataclass(frozen=True)
class ViTArch:
    """An AutoFormer subnet. Blocks ``>= depth`` of the supernet are skipped.

    ``num_heads`` and ``mlp_ratio`` have exactly ``depth`` entries. Lists are turned into tuples
    and integer MLP ratios into floats on construction, so an arch read back from JSON or YAML
    equals (and hashes like) the one that was written.
    """

    embed_dim: int
    depth: int
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]

    def __post_init__(self) -> None:
        if isinstance(self.num_heads, list):
            object.__setattr__(self, "num_heads", tuple(self.num_heads))
        if isinstance(self.mlp_ratio, (list, tuple)):
            object.__setattr__(self, "mlp_ratio", tuple(_as_float(r) for r in self.mlp_ratio))


def _as_float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def validate_vit_arch(arch: Any, config: ViTSpaceConfig) -> None:
    """Raise ``ValueError`` naming the first offending field of ``arch`` and its allowed values."""
    if not isinstance(arch, ViTArch):
        raise ValueError(f"arch must be a ViTArch, got {type(arch).__name__}")
    _check_choice("embed_dim", arch.embed_dim, config.embed_dims)
    _check_choice("depth", arch.depth, config.depths)
    for name in ("num_heads", "mlp_ratio"):
        values = getattr(arch, name)
        if not isinstance(values, tuple) or len(values) != arch.depth:
            shown = len(values) if isinstance(values, tuple) else type(values).__name__
            raise ValueError(
                f"{name} must have one entry per block: got {shown} for depth={arch.depth}; "
                f"allowed: a tuple of {arch.depth} values"
            )
    for i, heads in enumerate(arch.num_heads):
        _check_choice(f"num_heads[{i}]", heads, config.num_heads)
    for i, ratio in enumerate(arch.mlp_ratio):
        _check_choice(f"mlp_ratio[{i}]", ratio, config.mlp_ratios)


def _check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    # bool is an int subclass and 4 == 4.0; insist on the choice's own kind of number.
    kind = float if isinstance(allowed[0], float) else int
    if isinstance(value, bool) or not isinstance(value, kind) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {list(allowed)}")
