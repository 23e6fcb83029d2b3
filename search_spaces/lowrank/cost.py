"""Analytic parameters and MACs of a low-rank subnet's exported model.

The same conventions as the ViT family (``search_spaces/vit/cost.py``): params equal the
exported timm model's parameter count; flops are multiply-accumulates of one image (patch
convolution, every linear layer, both attention matmuls; the head sees the class token only),
half of what ``FlopCounterMode`` reports. Every low-rank layer is priced by ``rank.py``'s rule,
the one the supernet and export follow.
"""

from __future__ import annotations

from search_spaces.lowrank.arch import LowRankArch
from search_spaces.lowrank.config import LowRankSpaceConfig
from search_spaces.lowrank.rank import layer_macs, layer_params, rank_of


def layer_ranks(config: LowRankSpaceConfig, arch: LowRankArch, block: int) -> dict[str, int]:
    """Rank of each linear layer of block ``block`` (dense layers at their full rank)."""
    ratios = dict(zip(config.layers, arch.ranks[block], strict=True))
    ranks = {}
    for layer in ("qkv", "proj", "fc1", "fc2"):
        i, o = config.layer_shape(block, layer)
        ranks[layer] = rank_of(ratios.get(layer, 1.0), i, o)
    return ranks


def block_linear_macs(config: LowRankSpaceConfig, arch: LowRankArch, block: int) -> int:
    """MACs per token of block ``block``'s four linear layers."""
    ranks = layer_ranks(config, arch, block)
    return sum(layer_macs(k, *config.layer_shape(block, layer)) for layer, k in ranks.items())


def lowrank_params(config: LowRankSpaceConfig, arch: LowRankArch) -> int:
    e, n = config.embed_dim, config.num_tokens
    total = e * config.in_chans * config.patch_size**2 + e  # patch embedding
    total += e + n * e  # class token, position embedding
    for b in range(config.depth):
        total += 4 * e  # norm1, norm2
        for layer, k in layer_ranks(config, arch, b).items():
            total += layer_params(k, *config.layer_shape(b, layer))
    total += 2 * e + e * config.num_classes + config.num_classes  # final norm, head
    return total


def lowrank_macs(config: LowRankSpaceConfig, arch: LowRankArch) -> int:
    e, n = config.embed_dim, config.num_tokens
    total = config.num_patches * e * config.in_chans * config.patch_size**2
    for b in range(config.depth):
        a = config.num_heads[b] * config.head_dim
        total += n * block_linear_macs(config, arch, b) + 2 * n * n * a
    return total + e * config.num_classes
