"""``ViTSpace``: the AutoFormer search space behind the SearchSpace contract."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from search_spaces.base import Encoded, SearchSpace, Supernet
from search_spaces.vit.arch import ViTArch, validate_vit_arch
from search_spaces.vit.config import STANDALONE_RECIPE, ViTSpaceConfig, mlp_hidden_dim
from search_spaces.vit.cost import vit_macs, vit_params
from search_spaces.vit.evolution import crossover_archs, mutate_arch, sample_arch
from search_spaces.vit.mole import MoleSpec, MoleViTSupernet
from search_spaces.vit.supernet import ViTSupernet, vit_timm_kwargs

_BUILDER = "search_spaces.vit.timm_model:build_timm_vit"


class ViTSpace(SearchSpace):
    """AutoFormer's ViT space: embed width, depth, per-block heads and MLP ratio.

    The flat encoding has keys ``embed_dim``, ``depth``, ``num_heads_<i>`` and ``mlp_ratio_<i>``
    for ``i < max depth``. Blocks at or beyond an arch's depth are padded with the smallest
    choice; ``decode`` ignores them. So every arch has the same keys, Optuna sees a static space,
    and ``decode(encode(arch)) == arch``.
    """

    family = "vit"
    arch_type = ViTArch
    config: ViTSpaceConfig

    def __init__(self, config: ViTSpaceConfig) -> None:
        if not isinstance(config, ViTSpaceConfig):
            raise ValueError(f"config must be a ViTSpaceConfig, got {type(config).__name__}")
        super().__init__(config)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_chans, c.img_size, c.img_size)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # ---- sampling and evolution ---------------------------------------------------------------
    def sample(self, rng: random.Random) -> ViTArch:
        return sample_arch(self.config, rng)

    def mutate(self, arch: ViTArch, rng: random.Random) -> ViTArch:
        self.validate(arch)
        return mutate_arch(self.config, arch, rng)

    def crossover(self, a: ViTArch, b: ViTArch, rng: random.Random) -> ViTArch:
        self.validate(a)
        self.validate(b)
        return crossover_archs(a, b, rng)

    def smallest(self) -> ViTArch:
        return self._uniform(0)

    def largest(self) -> ViTArch:
        return self._uniform(-1)

    def _uniform(self, index: int) -> ViTArch:
        c = self.config
        depth = c.depths[index]
        return ViTArch(
            embed_dim=c.embed_dims[index],
            depth=depth,
            num_heads=(c.num_heads[index],) * depth,
            mlp_ratio=(c.mlp_ratios[index],) * depth,
        )

    # ---- flat encoding ------------------------------------------------------------------------
    def _choices(self) -> dict[str, tuple[Any, ...]]:
        c = self.config
        choices: dict[str, tuple[Any, ...]] = {"embed_dim": c.embed_dims, "depth": c.depths}
        for i in range(c.max_depth):
            choices[f"num_heads_{i}"] = c.num_heads
        for i in range(c.max_depth):
            choices[f"mlp_ratio_{i}"] = c.mlp_ratios
        return choices

    def encode(self, arch: ViTArch) -> Encoded:
        self.validate(arch)
        c = self.config
        flat: Encoded = {"embed_dim": arch.embed_dim, "depth": arch.depth}
        for i in range(c.max_depth):
            flat[f"num_heads_{i}"] = arch.num_heads[i] if i < arch.depth else c.num_heads[0]
        for i in range(c.max_depth):
            flat[f"mlp_ratio_{i}"] = arch.mlp_ratio[i] if i < arch.depth else c.mlp_ratios[0]
        return flat

    def decode(self, flat: Mapping[str, Any]) -> ViTArch:
        flat = {k: _plain_scalar(v) for k, v in flat.items()}
        keys = list(self._choices())
        unknown = [k for k in flat if k not in keys]
        missing = [k for k in keys if k not in flat]
        if unknown or missing:
            raise ValueError(
                f"encoded ViT arch has unknown keys {unknown} and lacks keys {missing}; "
                f"expected exactly: {keys}"
            )
        depth = flat["depth"]
        if isinstance(depth, bool) or not isinstance(depth, int) or depth not in self.config.depths:
            raise ValueError(f"depth={depth!r} is not allowed; allowed: {list(self.config.depths)}")
        arch = ViTArch(
            embed_dim=flat["embed_dim"],
            depth=depth,
            num_heads=tuple(flat[f"num_heads_{i}"] for i in range(depth)),
            mlp_ratio=tuple(flat[f"mlp_ratio_{i}"] for i in range(depth)),
        )
        self.validate(arch)
        return arch

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution  # lazy: see base.SearchSpace

        return {key: CategoricalDistribution(choices) for key, choices in self._choices().items()}

    # ---- checking and pricing -----------------------------------------------------------------
    def validate(self, arch: ViTArch) -> None:
        validate_vit_arch(arch, self.config)

    def cost(self, arch: ViTArch) -> dict[str, int]:
        """``params`` of the extracted timm model; ``flops`` = MACs per image (see ``cost.py``)."""
        self.validate(arch)
        return {"params": vit_params(self.config, arch), "flops": vit_macs(self.config, arch)}

    def latency_units(self, arch: ViTArch) -> list[tuple[str, float]]:
        """Kernels of the extracted timm ViT with their MACs per image (the terms of
        ``vit_macs``, which they sum to): ``patch_embed``; per block ``attn`` (qkv, both
        attention matmuls, proj) and ``mlp`` (fc1, GELU, fc2); ``head``. Each LayerNorm (and
        the residual add after it) is a ``norm`` sized by its elements, ``tokens x embed``."""
        self.validate(arch)
        c = self.config
        e, n = arch.embed_dim, c.num_tokens
        units = [("patch_embed", float(c.num_patches * e * c.in_chans * c.patch_size**2))]
        for heads, ratio in zip(arch.num_heads, arch.mlp_ratio, strict=True):
            a, h = heads * c.head_dim, mlp_hidden_dim(e, ratio)
            units += [("norm", n * e), ("attn", n * e * 4 * a + 2 * n * n * a)]
            units += [("norm", n * e), ("mlp", 2 * n * e * h)]
        return units + [("norm", n * e), ("head", e * c.num_classes)]

    # ---- modules ------------------------------------------------------------------------------
    def build_supernet(self) -> ViTSupernet:
        return ViTSupernet(self.config)

    def export_spec(self, arch: ViTArch) -> dict[str, Any]:
        self.validate(arch)
        return {"builder": _BUILDER, "kwargs": vit_timm_kwargs(self.config, arch)}

    def export_requirements(self) -> list[str]:
        return ["torch", "timm"]

    def standalone_recipe(self) -> dict[str, Any]:
        """AutoFormer's AdamW recipe (``config.STANDALONE_RECIPE``)."""
        return dict(STANDALONE_RECIPE)

    def wrap_supernet(self, base: Supernet, adapter: Mapping[str, Any]) -> MoleViTSupernet:
        """TAS-LoRA: ``base`` with LoRA experts and an architecture router; ``adapter`` is the
        plain-data :class:`MoleSpec` (the config's ``mole`` section)."""
        if not isinstance(adapter, Mapping):
            raise ValueError(f"adapter must be a mapping of MoLE settings, got {adapter!r}")
        return MoleViTSupernet(base, MoleSpec.from_dict(adapter))


def _plain_scalar(value: Any) -> Any:
    """numpy scalars (an archive read back from parquet) as the Python int/float they hold."""
    if not isinstance(value, (bool, int, float, str)) and hasattr(value, "item"):
        return value.item()
    return value
