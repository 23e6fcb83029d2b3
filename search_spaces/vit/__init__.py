"""The ViT family (AutoFormer, and TAS-LoRA): space, supernet, MoLE supernet, timm extraction.

Importing this package registers the family as ``"vit"`` with the presets of ``presets.py``.
"""

from search_spaces.registry import register_family
from search_spaces.vit.arch import ViTArch
from search_spaces.vit.config import ViTSpaceConfig
from search_spaces.vit.mole import (
    ArchRouter,
    MoleSpec,
    MoleViTSupernet,
    build_mole_supernet,
    group_init,
    group_labels,
)
from search_spaces.vit.presets import DEFAULT_PRESET, PRESETS
from search_spaces.vit.space import ViTSpace
from search_spaces.vit.supernet import ViTSupernet
from search_spaces.vit.timm_model import build_timm_vit

register_family(
    "vit",
    build=ViTSpace,
    presets=PRESETS,
    default_preset=DEFAULT_PRESET,
    summary="AutoFormer ViT: embed width, depth, per-block heads and MLP ratio",
)

__all__ = [
    "PRESETS",
    "ArchRouter",
    "MoleSpec",
    "MoleViTSupernet",
    "ViTArch",
    "ViTSpace",
    "ViTSpaceConfig",
    "ViTSupernet",
    "build_mole_supernet",
    "build_timm_vit",
    "group_init",
    "group_labels",
]
