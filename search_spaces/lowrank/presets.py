"""Named dense ViTs for the low-rank family: configuration as data.

``deit-tiny``, ``deit-small`` and ``deit-base`` are DeiT's shapes (224 px, patch 16, 1000
classes, 12 blocks, MLP ratio 4, head width 64) with FLORA's rank choices (DeiT-S: sixths,
DeiT-B: eighths without 7/8). ``vit-28`` (28x28x1, Fashion-MNIST) and ``vit-32`` (32x32x3,
CIFAR-10) are laptop-sized dense models, as wide as the ViT family's largest subnets.

A run that starts from a checkpoint or an export takes the dense model's shape from it (the
``pretrain`` stage writes the shape into the space it hands on); the preset then only supplies
the rank choices and the sampling rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from search_spaces.lowrank.config import LowRankSpaceConfig

_IMAGENET = {"img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000}
_EIGHTHS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
_SIXTHS = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0)
_QUARTERS = (0.25, 0.5, 0.75, 1.0)


def _deit(embed_dim: int, heads: int, ratios: tuple[float, ...]) -> LowRankSpaceConfig:
    return LowRankSpaceConfig(
        **_IMAGENET,
        embed_dim=embed_dim,
        num_heads=(heads,) * 12,
        mlp_ratio=(4.0,) * 12,
        head_dim=64,
        rank_ratios=ratios,
    )


PRESETS: Mapping[str, LowRankSpaceConfig] = MappingProxyType(
    {
        "vit-28": LowRankSpaceConfig(
            img_size=28,
            patch_size=4,
            in_chans=1,
            num_classes=10,
            embed_dim=64,
            num_heads=(4,) * 4,
            mlp_ratio=(4.0,) * 4,
            head_dim=16,
            rank_ratios=_QUARTERS,
        ),
        "vit-32": LowRankSpaceConfig(
            img_size=32,
            patch_size=4,
            in_chans=3,
            num_classes=10,
            embed_dim=72,
            num_heads=(4,) * 4,
            mlp_ratio=(4.0,) * 4,
            head_dim=18,
            rank_ratios=_QUARTERS,
        ),
        "deit-tiny": _deit(192, 3, _EIGHTHS),
        "deit-small": _deit(384, 6, _SIXTHS),
        "deit-base": _deit(768, 12, _EIGHTHS),
    }
)

DEFAULT_PRESET = "vit-28"
