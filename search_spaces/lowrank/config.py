"""Configuration of a low-rank search space (FLORA): the dense ViT's shape and the rank choices.

One frozen dataclass, checked once on construction (``registry.build_space`` re-runs the checks
after overrides). The dense model is a timm ``VisionTransformer`` with a class token, q-k-v bias
and per-block head counts and MLP ratios (so an AutoFormer/TAS-LoRA export is one too);
``head_dim`` fixes the q-k-v width as ``heads x head_dim``.

The searched decision is, per block, one rank ratio for each layer of ``layers`` (FLORA:
``qkv``, ``fc1``, ``fc2``; ``proj`` optional). A layer of ``in`` inputs and ``out`` outputs at
ratio ``r`` has rank ``k = round(r x min(in, out))`` (``rank.py``). ``allowed`` restricts each
block to a set of ratio tuples (what the ``filter`` stage keeps); it is part of the space, so
every stage and worker that builds this config sees the same restricted space.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

LAYERS = ("qkv", "proj", "fc1", "fc2")  # the linear layers of a block, in forward order
SAMPLING = ("lowrank-aware", "uniform")
SINGULAR_VALUES = ("split", "first", "second")

Choice = tuple[float, ...]
"""One block's ratios, one per entry of ``layers`` (e.g. ``(r_qkv, r_fc1, r_fc2)``)."""


@dataclasses.dataclass(frozen=True)
class LowRankSpaceConfig:
    """A dense ViT and the per-layer rank ratios searched over it.

    Attributes:
        img_size, patch_size, in_chans, num_classes: the dense model's input and output.
        embed_dim: the dense model's width.
        num_heads: heads per block (its length is the depth).
        mlp_ratio: MLP hidden width / embed width per block (timm: ``int(dim * ratio)``).
        head_dim: width of one head; q, k, v of block i are ``num_heads[i] * head_dim`` wide.
        rank_ratios: the ratio choices of every low-rank layer; must contain 1.0 (dense).
        layers: which of a block's linear layers are low-rank (FLORA: qkv, fc1, fc2).
        allowed: per block, the ratio tuples (one ratio per entry of ``layers``) it may use;
            None: every combination. Each block's set must contain the full-rank tuple.
        sampling: ``lowrank-aware``: P(block tuple) proportional to 1 / product of its ratios
            (FLORA); ``uniform``: uniform over the block's tuples.
        singular_values: where the SVD puts the singular values: ``split`` (sqrt into each
            factor), ``first`` (into the in -> k factor) or ``second`` (into the k -> out one).
        mutate_block_prob: evolution: per block, probability to redraw its tuple (FLORA: 0.2).
    """

    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    embed_dim: int
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    head_dim: int
    rank_ratios: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
    layers: tuple[str, ...] = ("qkv", "fc1", "fc2")
    allowed: tuple[tuple[Choice, ...], ...] | None = None
    sampling: str = "lowrank-aware"
    singular_values: str = "split"
    mutate_block_prob: float = 0.2

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "head_dim"):
            _check_positive_int(name, getattr(self, name))
        if self.img_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} must divide img_size={self.img_size}; allowed: "
                f"{[p for p in range(1, self.img_size + 1) if self.img_size % p == 0]}"
            )
        heads = _as_tuple("num_heads", self.num_heads)
        for h in heads:
            _check_positive_int("num_heads", h)
        ratios = tuple(_as_float("mlp_ratio", r) for r in _as_tuple("mlp_ratio", self.mlp_ratio))
        if len(ratios) != len(heads):
            raise ValueError(
                f"mlp_ratio has {len(ratios)} entries but num_heads has {len(heads)}; allowed: "
                "one entry per block in each"
            )
        self._set("num_heads", heads)
        self._set("mlp_ratio", ratios)
        choices = tuple(sorted({_as_float("rank_ratios", r) for r in self.rank_ratios}))
        if not choices or len(choices) != len(tuple(self.rank_ratios)):
            raise ValueError(
                f"rank_ratios={list(self.rank_ratios)!r}; allowed: distinct numbers in (0, 1]"
            )
        if any(not 0.0 < r <= 1.0 for r in choices) or choices[-1] != 1.0:
            raise ValueError(
                f"rank_ratios={list(choices)} must lie in (0, 1] and contain 1.0 (the dense "
                "layer); allowed: e.g. [0.25, 0.5, 0.75, 1.0]"
            )
        self._set("rank_ratios", choices)
        layers = _as_tuple("layers", self.layers)
        if not layers or any(x not in LAYERS for x in layers) or len(set(layers)) != len(layers):
            raise ValueError(
                f"layers={list(layers)!r}; allowed: distinct names out of {list(LAYERS)}"
            )
        self._set("layers", tuple(x for x in LAYERS if x in layers))  # forward order
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling={self.sampling!r}; allowed: {list(SAMPLING)}")
        if self.singular_values not in SINGULAR_VALUES:
            raise ValueError(
                f"singular_values={self.singular_values!r}; allowed: {list(SINGULAR_VALUES)}"
            )
        p = self.mutate_block_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"mutate_block_prob={p!r}; allowed: a number in [0, 1]")
        if self.allowed is not None:
            self._set("allowed", self._check_allowed(self.allowed))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_allowed(self, value: Any) -> tuple[tuple[Choice, ...], ...]:
        blocks = _as_tuple("allowed", value)
        if len(blocks) != self.depth:
            raise ValueError(
                f"allowed has {len(blocks)} blocks but the model has {self.depth}; allowed: "
                "one list of ratio tuples per block"
            )
        full = self.full_choice
        out = []
        for b, block in enumerate(blocks):
            seen = []
            for choice in _as_tuple(f"allowed[{b}]", block):
                choice = tuple(_as_float(f"allowed[{b}]", r) for r in _as_tuple("", choice))
                if len(choice) != len(self.layers) or any(
                    r not in self.rank_ratios for r in choice
                ):
                    raise ValueError(
                        f"allowed[{b}] holds {list(choice)}; allowed: {len(self.layers)} ratios "
                        f"({', '.join(self.layers)}) out of {list(self.rank_ratios)}"
                    )
                if choice not in seen:
                    seen.append(choice)
            if full not in seen:
                raise ValueError(
                    f"allowed[{b}] lacks the full-rank tuple {list(full)}; allowed: sets that "
                    "contain it"
                )
            out.append(tuple(sorted(seen)))
        return tuple(out)

    # ---- derived ------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.num_heads)

    @property
    def full_choice(self) -> Choice:
        return (1.0,) * len(self.layers)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1

    def hidden_dim(self, block: int) -> int:
        """timm's ``Block`` rule for the MLP width."""
        return int(self.embed_dim * self.mlp_ratio[block])

    def layer_shape(self, block: int, layer: str) -> tuple[int, int]:
        """``(in_features, out_features)`` of one linear layer of a block."""
        e, a, h = self.embed_dim, self.num_heads[block] * self.head_dim, self.hidden_dim(block)
        return {"qkv": (e, 3 * a), "proj": (a, e), "fc1": (e, h), "fc2": (h, e)}[layer]

    def block_choices(self, block: int) -> tuple[Choice, ...]:
        """The ratio tuples block ``block`` may use, sorted."""
        if self.allowed is not None:
            return self.allowed[block]
        import itertools

        return tuple(itertools.product(self.rank_ratios, repeat=len(self.layers)))


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")


def _as_tuple(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a list")
    return tuple(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} value {value!r} is not allowed; allowed: numbers")
    return float(value)
