"""The exported model of a low-rank subnet: a plain timm ``VisionTransformer`` in which each
factored layer is ``nn.Sequential(Linear(in, k, bias=False), Linear(k, out))``.

This is the export ``builder``: ``build_lowrank_vit(**kwargs)`` with the kwargs of
``LowRankSpace.export_spec(arch)`` (the dense ViT's timm kwargs plus ``factored``: layer name ->
rank for the layers that run as two factors) rebuilds the module to load exported weights into.
With ``factored`` empty it is the dense model. Only timm and torch modules are used, so the
export loads wherever timm does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # timm itself is imported by build_timm_vit, when a model is built
    from timm.models.vision_transformer import VisionTransformer

from search_spaces.vit.timm_model import build_timm_vit


def build_lowrank_vit(
    *,
    img_size: int,
    patch_size: int,
    in_chans: int,
    num_classes: int,
    embed_dim: int,
    num_heads: Sequence[int],
    mlp_ratio: Sequence[float],
    head_dim: int,
    factored: Mapping[str, int] | None = None,
    init_weights: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """The dense timm ViT with the layers named in ``factored`` (e.g. ``blocks.0.attn.qkv``)
    replaced by their two factors of the given rank."""
    model = build_timm_vit(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        head_dim=head_dim,
        init_weights=init_weights,
        device=device,
        dtype=dtype,
    )
    for name, rank in (factored or {}).items():
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        dense = getattr(parent, attr)
        if not isinstance(dense, nn.Linear) or not 1 <= int(rank) < min(
            dense.in_features, dense.out_features
        ):
            raise ValueError(
                f"factored layer {name!r} at rank {rank!r}; allowed: a Linear layer of the ViT "
                "and a rank in [1, min(in, out))"
            )
        kw = {"device": dense.weight.device, "dtype": dense.weight.dtype}
        setattr(
            parent,
            attr,
            nn.Sequential(
                nn.Linear(dense.in_features, int(rank), bias=False, **kw),
                nn.Linear(int(rank), dense.out_features, bias=dense.bias is not None, **kw),
            ),
        )
    return model
