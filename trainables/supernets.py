"""The one construction path of a run's supernet: the space's plain supernet, or (TAS-LoRA) that
supernet wrapped with LoRA experts and an architecture router.

``mole`` is the plain-data MoLE spec (experts, rank, alpha, targets, router sizes) or None.
Training workers, evaluators, export and analysis all build their model here, so a checkpoint
written by one loads in the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace, Supernet
from trainables.train import checkpoint as ckpt


def build_supernet(space: SearchSpace, mole: Mapping[str, Any] | None = None) -> Supernet:
    """A freshly initialised supernet of `space` (with MoLE experts when `mole` is given)."""
    base = space.build_supernet()
    if mole is None:
        return base
    from search_spaces.vit.mole import MoleSpec, MoleViTSupernet

    spec = dict(mole)
    if "targets" in spec:
        spec["targets"] = tuple(spec["targets"])
    return MoleViTSupernet(base, MoleSpec(**spec))


def base_of(supernet: Supernet) -> Supernet:
    """The weight-sharing supernet inside (itself when it has no experts)."""
    return getattr(supernet, "base", supernet)


def load_supernet(
    space: SearchSpace, checkpoint: str | Path, mole: Mapping[str, Any] | None = None
) -> Supernet:
    """`build_supernet` with the weights of `checkpoint` (a checkpoint folder)."""
    supernet = build_supernet(space, mole)
    ckpt.load_into(supernet, checkpoint)
    return supernet
