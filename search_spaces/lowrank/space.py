"""``LowRankSpace``: FLORA's per-layer rank space behind the SearchSpace contract."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from search_spaces.base import Encoded, SearchSpace
from search_spaces.lowrank.arch import LowRankArch, validate_lowrank_arch
from search_spaces.lowrank.config import Choice, LowRankSpaceConfig
from search_spaces.lowrank.cost import (
    block_linear_macs,
    layer_ranks,
    lowrank_macs,
    lowrank_params,
)
from search_spaces.lowrank.rank import is_factored
from search_spaces.lowrank.supernet import (
    LowRankViTSupernet,
    dense_timm_kwargs,
    lowrank_timm_kwargs,
)
from search_spaces.vit.config import STANDALONE_RECIPE

_BUILDER = "search_spaces.lowrank.timm_model:build_lowrank_vit"
_DENSE_BUILDERS = (_BUILDER, "search_spaces.vit.timm_model:build_timm_vit")
#: timm ``VisionTransformer`` kwargs a plain checkpoint may come with, and timm's defaults.
_TIMM_DEFAULTS = {
    "img_size": 224,
    "patch_size": 16,
    "in_chans": 3,
    "num_classes": 1000,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
}
_TIMM_FIXED = {"qkv_bias": True, "class_token": True, "global_pool": "token"}


def choice_text(choice: Choice) -> str:
    """``(0.5, 0.25, 1.0)`` -> ``"0.5/0.25/1"``: one block's ratios as an Optuna choice."""
    return "/".join(f"{r:g}" for r in choice)


class LowRankSpace(SearchSpace):
    """Per block, one rank ratio per low-rank layer, out of the block's allowed tuples.

    The flat encoding has one categorical key per block, ``block_<b>``, whose value is the
    block's tuple as text (``"0.5/0.25/1"`` for qkv/fc1/fc2). A block is the unit of sampling,
    mutation, crossover and filtering, so Optuna's samplers (NSGA-II's crossover included)
    can never build a tuple the filter dropped.
    """

    family = "lowrank"
    arch_type = LowRankArch
    config: LowRankSpaceConfig

    def __init__(self, config: LowRankSpaceConfig) -> None:
        if not isinstance(config, LowRankSpaceConfig):
            raise ValueError(f"config must be a LowRankSpaceConfig, got {type(config).__name__}")
        super().__init__(config)
        c = config
        self._choices = [c.block_choices(b) for b in range(c.depth)]
        self._texts = [{choice_text(t): t for t in ts} for ts in self._choices]
        weights = []
        for ts in self._choices:
            if c.sampling == "uniform":
                weights.append([1.0] * len(ts))
            else:
                weights.append([1.0 / math.prod(t) for t in ts])
        self._weights = weights

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_chans, c.img_size, c.img_size)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # ---- sampling and evolution ---------------------------------------------------------------
    def sampling_weights(self, block: int) -> dict[Choice, float]:
        """Block ``block``'s tuples and their sampling probabilities."""
        total = sum(self._weights[block])
        return {
            t: w / total for t, w in zip(self._choices[block], self._weights[block], strict=True)
        }

    def sample(self, rng: random.Random) -> LowRankArch:
        """Each block drawn independently by ``config.sampling``: FLORA's low-rank-aware rule
        P(t) proportional to 1 / prod(t) over the block's tuples, or uniform."""
        return LowRankArch(
            tuple(
                rng.choices(ts, weights=w)[0]
                for ts, w in zip(self._choices, self._weights, strict=True)
            )
        )

    def mutate(self, arch: LowRankArch, rng: random.Random) -> LowRankArch:
        """FLORA's mutation: each block redrawn uniformly from its tuples with probability
        ``mutate_block_prob``."""
        self.validate(arch)
        p = self.config.mutate_block_prob
        return LowRankArch(
            tuple(
                rng.choice(ts) if rng.random() < p else t
                for t, ts in zip(arch.ranks, self._choices, strict=True)
            )
        )

    def crossover(self, a: LowRankArch, b: LowRankArch, rng: random.Random) -> LowRankArch:
        """Per block, the tuple of one parent: children stay inside the allowed sets."""
        self.validate(a)
        self.validate(b)
        return LowRankArch(
            tuple(x if rng.random() < 0.5 else y for x, y in zip(a.ranks, b.ranks, strict=True))
        )

    def smallest(self) -> LowRankArch:
        """Per block, its cheapest tuple (fewest MACs; the smallest ratios break ties)."""
        c = self.config
        blocks = []
        for b, ts in enumerate(self._choices):
            blocks.append(
                min(ts, key=lambda t: (block_linear_macs(c, _one(c, b, t), b), sum(t), t))
            )
        return LowRankArch(tuple(blocks))

    def largest(self) -> LowRankArch:
        """Every layer at full rank: the dense model."""
        return LowRankArch((self.config.full_choice,) * self.config.depth)

    # ---- flat encoding ------------------------------------------------------------------------
    def encode(self, arch: LowRankArch) -> Encoded:
        self.validate(arch)
        return {f"block_{b}": choice_text(t) for b, t in enumerate(arch.ranks)}

    def decode(self, flat: Mapping[str, Any]) -> LowRankArch:
        keys = [f"block_{b}" for b in range(self.config.depth)]
        unknown = [k for k in flat if k not in keys]
        missing = [k for k in keys if k not in flat]
        if unknown or missing:
            raise ValueError(
                f"encoded low-rank arch has unknown keys {unknown} and lacks keys {missing}; "
                f"expected exactly: {keys}"
            )
        blocks = []
        for b, key in enumerate(keys):
            value = flat[key]
            value = value.item() if hasattr(value, "item") else value
            if value not in self._texts[b]:
                raise ValueError(
                    f"{key}={value!r} is not allowed; allowed: {sorted(self._texts[b])}"
                )
            blocks.append(self._texts[b][value])
        return LowRankArch(tuple(blocks))

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution  # lazy: see base.SearchSpace

        return {
            f"block_{b}": CategoricalDistribution(tuple(texts))
            for b, texts in enumerate(self._texts)
        }

    # ---- checking and pricing -----------------------------------------------------------------
    def validate(self, arch: LowRankArch) -> None:
        validate_lowrank_arch(arch, self.config)

    def cost(self, arch: LowRankArch) -> dict[str, int]:
        """``params`` of the exported model; ``flops`` = its MACs per image (``cost.py``)."""
        self.validate(arch)
        return {
            "params": lowrank_params(self.config, arch),
            "flops": lowrank_macs(self.config, arch),
        }

    def latency_units(self, arch: LowRankArch) -> list[tuple[str, float]]:
        """Kernels of the exported timm ViT (``timm_model.py``) with their MACs per image (the
        terms of ``lowrank_macs``, which they sum to): ``patch_embed``; per block, in forward
        order, qkv, ``attention`` (timm's fused ``q @ k^T``, softmax, ``attn @ v``:
        ``2 x tokens^2 x heads x head_dim``), proj, fc1, fc2; ``head`` (class token only).

        Each of the four linear layers is what export made of it (``rank.py``'s rule): a
        ``linear``, one dense matmul of ``tokens x in x out`` (full rank, or a rank whose two
        factors would cost more and that runs fused), or two ``linear_factored`` units, the
        thin matmuls ``in -> k`` and ``k -> out`` (``tokens x in x k`` and ``tokens x k x
        out``): two calls, whose thin inner dimension runs unlike a square matmul. Each LayerNorm
        (and the residual add after it) is a ``norm`` sized by its elements, ``tokens x embed``; GELU is left to
        the intercept (the dense shape, hence its size, is fixed in this space)."""
        self.validate(arch)
        c = self.config
        e, n = c.embed_dim, c.num_tokens
        units = [("patch_embed", float(c.num_patches * e * c.in_chans * c.patch_size**2))]
        for b in range(c.depth):
            ranks = layer_ranks(c, arch, b)
            qkv, proj, fc1, fc2 = (
                _linear_units(n, *c.layer_shape(b, layer), ranks[layer])
                for layer in ("qkv", "proj", "fc1", "fc2")
            )
            a = c.num_heads[b] * c.head_dim
            units += [("norm", float(n * e)), *qkv, ("attention", float(2 * n * n * a)), *proj]
            units += [("norm", float(n * e)), *fc1, *fc2]
        return units + [("norm", float(n * e)), ("head", float(e * c.num_classes))]

    def describe(self, arch: LowRankArch) -> str:
        self.validate(arch)
        layers = "/".join(self.config.layers)
        return f"{layers}: " + ", ".join(choice_text(t) for t in arch.ranks)

    def parse(self, text: str) -> LowRankArch:
        if text.lstrip().startswith("{"):
            return self.from_json(text)
        _, _, body = text.rpartition(":")
        parts = [p.strip() for p in body.split(",")]
        return self.decode({f"block_{b}": p for b, p in enumerate(parts)})

    # ---- modules ------------------------------------------------------------------------------
    def build_supernet(self) -> LowRankViTSupernet:
        return LowRankViTSupernet(self.config)

    def export_spec(self, arch: LowRankArch) -> dict[str, Any]:
        self.validate(arch)
        return {"builder": _BUILDER, "kwargs": lowrank_timm_kwargs(self.config, arch)}

    def export_requirements(self) -> list[str]:
        return ["torch", "timm"]

    def standalone_recipe(self) -> dict[str, Any]:
        """The ViT family's AdamW recipe (AutoFormer's; ``search_spaces.vit.config``): FLORA
        fine-tunes from a dense model, but a low-rank ViT trained from scratch trains like a
        ViT. No distillation: a stand-alone network has no teacher."""
        return dict(STANDALONE_RECIPE)

    # ---- the dense model and filtering --------------------------------------------------------
    def dense_overrides(self, model: Mapping[str, Any]) -> dict[str, Any]:
        """Overrides that make this space describe the dense ViT ``model``: an export's
        ``{"builder", "kwargs"}`` (a ViT-family or dense low-rank export) or ``{"timm": kwargs}``
        of a timm ``VisionTransformer`` (``depth``, one ``num_heads`` and ``mlp_ratio``)."""
        if "timm" in model:
            kwargs = dict(model["timm"] or {})
            unknown = sorted(set(kwargs) - set(_TIMM_DEFAULTS) - set(_TIMM_FIXED))
            if unknown:
                raise ValueError(
                    f"timm kwargs {unknown} are not supported; allowed: "
                    f"{sorted(_TIMM_DEFAULTS)} (and {_TIMM_FIXED} as they are)"
                )
            for key, value in _TIMM_FIXED.items():
                if key in kwargs and kwargs[key] != value:
                    raise ValueError(f"timm kwarg {key}={kwargs[key]!r}; allowed: {value!r}")
            k = {**_TIMM_DEFAULTS, **{x: v for x, v in kwargs.items() if x in _TIMM_DEFAULTS}}
            if k["embed_dim"] % k["num_heads"]:
                raise ValueError(
                    f"timm kwargs: num_heads={k['num_heads']} must divide "
                    f"embed_dim={k['embed_dim']}"
                )
            return {
                "img_size": k["img_size"],
                "patch_size": k["patch_size"],
                "in_chans": k["in_chans"],
                "num_classes": k["num_classes"],
                "embed_dim": k["embed_dim"],
                "num_heads": [k["num_heads"]] * k["depth"],
                "mlp_ratio": [float(k["mlp_ratio"])] * k["depth"],
                "head_dim": k["embed_dim"] // k["num_heads"],
            }
        builder = model.get("builder")
        kwargs = dict(model.get("kwargs") or {})
        if builder not in _DENSE_BUILDERS or kwargs.pop("factored", None):
            raise ValueError(
                f"model built by {builder!r} with factored layers {model.get('kwargs', {}).get('factored')} "
                f"is not a dense ViT; allowed: exports of {list(_DENSE_BUILDERS)} without factored layers"
            )
        wanted = dense_timm_kwargs(self.config)
        missing = sorted(set(wanted) - set(kwargs))
        if missing:
            raise ValueError(f"the model's kwargs lack {missing}; allowed: {sorted(wanted)}")
        return {key: kwargs[key] for key in wanted}

    def dense_spec(self) -> dict[str, Any]:
        """``export_spec`` of the dense model (every layer at full rank)."""
        return self.export_spec(self.largest())

    def filter_units(self) -> int:
        """Blocks, judged one at a time by the filter stage."""
        return self.config.depth

    def local_overrides(self, unit: int) -> dict[str, Any]:
        """Overrides of the local space in which only block ``unit`` is low-rank (every
        tuple of the rank product, sampled uniformly as in FLORA's local supernets) and every
        other block is dense."""
        c = self.config
        full = c.full_choice
        everything = LowRankSpaceConfig.block_choices(_unrestricted(c), unit)
        return {
            "allowed": [
                [list(t) for t in (everything if b == unit else (full,))] for b in range(c.depth)
            ],
            "sampling": "uniform",
        }

    def local_archs(self, unit: int) -> dict[str, LowRankArch]:
        """Every arch of this space that varies block ``unit`` only (others dense), by the
        block's tuple as text."""
        full = self.largest().ranks
        return {
            text: LowRankArch(full[:unit] + (t,) + full[unit + 1 :])
            for text, t in self._texts[unit].items()
        }

    def restrict_overrides(self, kept: Mapping[int, Sequence[str]]) -> dict[str, Any]:
        """Overrides restricting each block to its ``kept`` tuples (text form); blocks not in
        ``kept`` keep theirs."""
        allowed = []
        for b in range(self.config.depth):
            texts = kept.get(b, list(self._texts[b]))
            unknown = [t for t in texts if t not in self._texts[b]]
            if unknown:
                raise ValueError(
                    f"block {b}: tuples {unknown} are not in the space; allowed: "
                    f"{sorted(self._texts[b])}"
                )
            allowed.append([list(self._texts[b][t]) for t in texts])
        return {"allowed": allowed}


def _linear_units(tokens: int, i: int, o: int, rank: int) -> list[tuple[str, float]]:
    """Latency units of one ``i -> o`` linear layer at ``rank`` over ``tokens`` tokens: two
    ``linear_factored`` matmuls where ``rank.py`` factors it, else one dense ``linear``."""
    if is_factored(rank, i, o):
        return [
            ("linear_factored", float(tokens * i * rank)),
            ("linear_factored", float(tokens * rank * o)),
        ]
    return [("linear", float(tokens * i * o))]


def _unrestricted(config: LowRankSpaceConfig) -> LowRankSpaceConfig:
    import dataclasses

    return dataclasses.replace(config, allowed=None)


def _one(config: LowRankSpaceConfig, block: int, choice: Choice) -> LowRankArch:
    """An arch with ``choice`` at ``block`` and full rank elsewhere (to price one block)."""
    full = config.full_choice
    return LowRankArch(tuple(choice if b == block else full for b in range(config.depth)))
