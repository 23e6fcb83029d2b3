"""Named ViT search spaces: configuration as data, one frozen dataclass per preset.

``autoformer-*`` are AutoFormer's ImageNet spaces exactly as in DESIGN.md section 4.1 (224x224,
patch 16, 1000 classes, head width 64, supernet widths 256/448/640). Their param ranges
(smallest..largest subnet) contain the published AutoFormer-T/S/B sizes 5.7M/22.9M/53.7M.

``vit-28`` (28x28x1, e.g. Fashion-MNIST) and ``vit-32`` (32x32x3, e.g. CIFAR-10) are ours, sized
for laptops: on 2 CPU threads (torch 2.15), one 55k-image epoch of the LARGEST subnet (forward,
backward and AdamW step at batch 128, no data loading) measured about 65 s for each on an idle
2-core VM, and 80-100 s while other jobs shared it (vit-28 largest: 0.37M params, 19.6M MACs;
vit-32 largest: 0.25M params, 18.0M MACs; a plain timm ViT of ~0.4M params at patch 4 takes
~70 s). ``benchmarks/supernet_step.py`` re-measures the estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from search_spaces.vit.config import ViTSpaceConfig

_IMAGENET = {"img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000, "head_dim": 64}

PRESETS: Mapping[str, ViTSpaceConfig] = MappingProxyType(
    {
        "autoformer-tiny": ViTSpaceConfig(
            **_IMAGENET,
            embed_dims=(192, 216, 240),
            depths=(12, 13, 14),
            num_heads=(3, 4),
            mlp_ratios=(3.5, 4.0),
            supernet_embed_dim=256,
        ),
        "autoformer-small": ViTSpaceConfig(
            **_IMAGENET,
            embed_dims=(320, 384, 448),
            depths=(12, 13, 14),
            num_heads=(5, 6, 7),
            mlp_ratios=(3.0, 3.5, 4.0),
            supernet_embed_dim=448,
        ),
        "autoformer-base": ViTSpaceConfig(
            **_IMAGENET,
            embed_dims=(528, 576, 624),
            depths=(14, 15, 16),
            num_heads=(9, 10),
            mlp_ratios=(3.0, 3.5, 4.0),
            supernet_embed_dim=640,
        ),
        "vit-28": ViTSpaceConfig(
            img_size=28,
            patch_size=4,
            in_chans=1,
            num_classes=10,
            head_dim=16,
            embed_dims=(48, 64, 80),
            depths=(3, 4, 5),
            num_heads=(2, 3, 4),
            mlp_ratios=(2.0, 3.0, 4.0),
        ),
        "vit-32": ViTSpaceConfig(
            img_size=32,
            patch_size=4,
            in_chans=3,
            num_classes=10,
            head_dim=16,
            embed_dims=(48, 60, 72),
            depths=(2, 3, 4),
            num_heads=(2, 3, 4),
            mlp_ratios=(2.0, 3.0, 4.0),
        ),
    }
)

DEFAULT_PRESET = "vit-28"
