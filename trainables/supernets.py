"""The one construction path of a run's supernet: the space's plain supernet, or that supernet
wrapped with the adapter a method adds (TAS-LoRA: LoRA experts and an architecture router).

``adapter`` is the plain-data adapter spec (for TAS-LoRA: experts, rank, alpha, targets, router
sizes) that result files and checkpoint metadata record as ``"adapter"``, or None. The wrapping
goes through the family (``SearchSpace.wrap_supernet``), so nothing here knows a family.
Training workers, evaluators, export and analysis all build their model here, so a checkpoint
written by one loads in the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace, Supernet
from trainables.train import checkpoint as ckpt


def build_supernet(space: SearchSpace, adapter: Mapping[str, Any] | None = None) -> Supernet:
    """A freshly initialised supernet of `space`, wrapped with `adapter` when one is given."""
    base = space.build_supernet()
    if adapter is None:
        return base
    return space.wrap_supernet(base, adapter)


def base_of(supernet: Supernet) -> Supernet:
    """The weight-sharing supernet inside an adapter (itself when it has none)."""
    return getattr(supernet, "base", supernet)


def load_supernet(
    space: SearchSpace, checkpoint: str | Path, adapter: Mapping[str, Any] | None = None
) -> Supernet:
    """`build_supernet` with the weights of `checkpoint` (a checkpoint folder)."""
    supernet = build_supernet(space, adapter)
    ckpt.load_into(supernet, checkpoint)
    return supernet
