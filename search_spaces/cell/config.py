"""Configuration of a cell search space: one frozen dataclass for both kinds, checked once.

``kind`` picks the space: ``"nb201"`` (NAS-Bench-201's 4-node cell on its 3-stage skeleton) or
``"darts"`` (DARTS's normal + reduction cells on its search network). One class serves both so
that the registry's presets share one config type and ``build_space(..., overrides=...)`` can
change any field with :func:`dataclasses.replace`, which re-runs these checks. Fields that only
one kind uses must be ``None`` for the other, so an override never silently does nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

KINDS = ("nb201", "darts")
SELECTORS = ("it", "darts")


@dataclasses.dataclass(frozen=True)
class CellSpaceConfig:
    """A cell space and the supernet that covers it.

    Attributes:
        kind: ``"nb201"`` or ``"darts"``.
        img_size: input height and width; a multiple of 4 (both skeletons halve it twice).
        in_chans: input channels.
        num_classes: output logits.
        channels: ``C``, the width of the first stage (stages run at C, 2C, 4C).
        cells_per_stage: NB201 only: ``N``, cells per stage (the benchmark: 5).
        layers: DARTS only: cells in total; reduction cells at ``layers // 3`` and
            ``2 * layers // 3`` (DARTS search: 8, final network: 20).
        stem_multiplier: DARTS only: the stem has ``stem_multiplier * C`` channels (DARTS: 3).
        selector: operation selector of the mixed supernet: ``"it"`` (IT-NAS's Indicator
            Token) or ``"darts"`` (softmax over per-edge alphas, the baseline).
        it_dim: width of the IT transformer's tokens.
        it_layers: transformer layers of the IT selector (IT-NAS: 1 or 2).
        it_heads: attention heads of the IT transformer; must divide ``it_dim``.
    """

    kind: str
    img_size: int
    in_chans: int
    num_classes: int
    channels: int
    cells_per_stage: int | None = None
    layers: int | None = None
    stem_multiplier: int | None = None
    selector: str = "it"
    it_dim: int = 32
    it_layers: int = 1
    it_heads: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not allowed; allowed: {list(KINDS)}")
        if self.selector not in SELECTORS:
            raise ValueError(
                f"selector={self.selector!r} is not allowed; allowed: {list(SELECTORS)}"
            )
        for name in ("img_size", "in_chans", "num_classes", "channels", "it_dim", "it_layers"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("it_heads", self.it_heads)
        if self.img_size % 4:
            raise ValueError(
                f"img_size={self.img_size} is not allowed; allowed: a multiple of 4 (the "
                "network halves the resolution twice)"
            )
        if self.it_dim % self.it_heads:
            raise ValueError(
                f"it_heads={self.it_heads} does not divide it_dim={self.it_dim}; allowed: "
                f"{[h for h in range(1, self.it_dim + 1) if self.it_dim % h == 0]}"
            )
        own = {"nb201": ("cells_per_stage",), "darts": ("layers", "stem_multiplier")}
        if self.kind == "darts" and self.stem_multiplier is None:
            object.__setattr__(self, "stem_multiplier", 3)
        for kind, names in own.items():
            for name in names:
                value = getattr(self, name)
                if kind == self.kind:
                    _check_positive_int(name, value)
                elif value is not None:
                    raise ValueError(
                        f"{name}={value!r} is only used by kind={kind!r}; allowed for "
                        f"kind={self.kind!r}: null"
                    )
        if self.kind == "darts":
            if self.channels % 2:
                raise ValueError(
                    f"channels={self.channels} is not allowed for kind='darts'; allowed: an even "
                    "number (FactorizedReduce splits the channels in two)"
                )
            if self.layers < 3:
                raise ValueError(
                    f"layers={self.layers} is not allowed; allowed: an integer >= 3 (two "
                    "reduction cells and at least one normal cell)"
                )

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def reduction_layers(self) -> tuple[int, ...]:
        """DARTS: indices of the reduction cells."""
        if self.kind != "darts":
            return ()
        return (self.layers // 3, 2 * self.layers // 3)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")
