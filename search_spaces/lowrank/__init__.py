"""The low-rank family (FLORA): per-layer rank ratios of a dense ViT, SVD weight inheritance.

Importing this package registers the family as ``"lowrank"`` with the presets of
``presets.py``.
"""

from search_spaces.lowrank.arch import LowRankArch
from search_spaces.lowrank.config import LowRankSpaceConfig
from search_spaces.lowrank.presets import DEFAULT_PRESET, PRESETS
from search_spaces.lowrank.rank import is_factored, layer_macs, rank_of
from search_spaces.lowrank.space import LowRankSpace, choice_text
from search_spaces.lowrank.supernet import LowRankLinear, LowRankViTSupernet
from search_spaces.lowrank.timm_model import build_lowrank_vit
from search_spaces.registry import register_family

register_family(
    "lowrank",
    build=LowRankSpace,
    presets=PRESETS,
    default_preset=DEFAULT_PRESET,
    summary="FLORA: per-layer rank ratios (qkv, fc1, fc2) of a dense ViT",
)

__all__ = [
    "PRESETS",
    "LowRankArch",
    "LowRankLinear",
    "LowRankSpace",
    "LowRankSpaceConfig",
    "LowRankViTSupernet",
    "build_lowrank_vit",
    "choice_text",
    "is_factored",
    "layer_macs",
    "rank_of",
]
