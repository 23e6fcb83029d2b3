"""Build the plain timm ``VisionTransformer`` that a ViT subnet is extracted into.

timm's ``VisionTransformer`` takes one ``num_heads`` and one ``mlp_ratio`` for all blocks, and its
``Block`` derives the head width as ``dim // num_heads``. An AutoFormer subnet needs per-block
heads and MLP ratios and a fixed head width (``heads * head_dim`` need not equal ``dim``). We get
both without any class of our own: ``block_fn`` hands timm one stock ``Block`` per layer, built
with that layer's MLP ratio, whose attention is a stock ``Attention`` with ``attn_head_dim``.
The result contains only timm modules, so it pickles, scripts and loads anywhere timm does, and
``timm``'s own forward (class token, position embedding, final norm, token pooling, head) runs it.

This module is also the export ``builder``: ``build_timm_vit(**kwargs)`` with the kwargs of
``ViTSpace.export_spec(arch)`` rebuilds the architecture to load exported weights into.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from timm.models.vision_transformer import Block, VisionTransformer

# timm is imported where a model is built, not at module import: importing timm pulls in
# torchvision and torch._dynamo (~3-5 s per process), which supernet training and scoring,
# the driver and every Ray worker would otherwise pay without building a timm model.


def build_timm_vit(
    *,
    img_size: int,
    patch_size: int,
    in_chans: int,
    num_classes: int,
    embed_dim: int,
    num_heads: Sequence[int],
    mlp_ratio: Sequence[float],
    head_dim: int,
    drop_path_rate: float = 0.0,
    init_weights: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """A timm ViT with ``len(num_heads)`` blocks, block ``i`` having ``num_heads[i]`` heads of
    width ``head_dim`` and an MLP of ``int(embed_dim * mlp_ratio[i])`` hidden units.

    ``drop_path_rate`` follows timm (linear from 0 to the rate over the blocks).
    ``init_weights=False`` skips timm's initialisation, for callers that overwrite every weight.
    """
    if len(num_heads) != len(mlp_ratio):
        raise ValueError(
            f"num_heads ({len(num_heads)} entries) and mlp_ratio ({len(mlp_ratio)} entries) "
            "must have one entry per block"
        )
    from timm.models.vision_transformer import VisionTransformer

    per_block = iter(zip(num_heads, mlp_ratio, strict=True))
    model = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        global_pool="token",
        embed_dim=embed_dim,
        depth=len(num_heads),
        num_heads=1,  # unused: every block's attention is replaced in _per_block_fn
        qkv_bias=True,
        class_token=True,
        drop_path_rate=drop_path_rate,
        block_fn=_per_block_fn(per_block, head_dim),
        weight_init="" if init_weights else "skip",
        device=device,
        dtype=dtype,
    )
    if next(per_block, None) is not None:  # pragma: no cover - guards a timm behaviour change
        raise RuntimeError("timm built fewer blocks than requested")
    return model


def _per_block_fn(per_block: Iterator[tuple[int, float]], head_dim: int) -> Any:
    """A ``block_fn`` for ``VisionTransformer`` that consumes one (heads, mlp_ratio) per call.

    timm calls ``block_fn`` once per block, in order, with the model-wide kwargs; we keep those
    (norm, activation, drop path, ...) and substitute the per-block head count and MLP ratio.
    """

    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    def block_fn(**kwargs: Any) -> Block:
        heads, ratio = next(per_block)
        # num_heads=1 lets Block build its default attention for any dim; it is replaced below
        # by one with the fixed head width, which Block itself cannot be asked for.
        block = Block(**{**kwargs, "num_heads": 1, "mlp_ratio": ratio})
        block.attn = Attention(
            kwargs["dim"],
            num_heads=heads,
            attn_head_dim=head_dim,
            qkv_bias=kwargs.get("qkv_bias", True),
            qk_norm=kwargs.get("qk_norm", False),
            proj_bias=kwargs.get("proj_bias", True),
            attn_drop=kwargs.get("attn_drop", 0.0),
            proj_drop=kwargs.get("proj_drop", 0.0),
            norm_layer=kwargs.get("norm_layer"),
            device=kwargs.get("device"),
            dtype=kwargs.get("dtype"),
        )
        return block

    return block_fn
