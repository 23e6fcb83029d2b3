"""AutoFormer's sampling, mutation and crossover operators (DESIGN.md section 4.1).

Pure functions of a config, the parent arch(s) and a :class:`random.Random`; they draw from no
other source of randomness, so a seeded generator reproduces a whole evolutionary search.
"""

from __future__ import annotations

import random

from search_spaces.vit.arch import ViTArch
from search_spaces.vit.config import ViTSpaceConfig


def sample_arch(config: ViTSpaceConfig, rng: random.Random) -> ViTArch:
    """Uniform over every gene: embed width, depth, then each block's heads and MLP ratio."""
    embed_dim = rng.choice(config.embed_dims)
    depth = rng.choice(config.depths)
    num_heads = tuple(rng.choice(config.num_heads) for _ in range(depth))
    mlp_ratio = tuple(rng.choice(config.mlp_ratios) for _ in range(depth))
    return ViTArch(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)


def mutate_arch(config: ViTSpaceConfig, arch: ViTArch, rng: random.Random) -> ViTArch:
    """AutoFormer's mutation, in the order of its reference implementation.

    1. with ``mutate_depth_prob`` resample the depth; a deeper arch gets new blocks with
       uniformly drawn heads and MLP ratio appended, a shallower one is truncated;
    2. each block's MLP ratio is resampled with ``mutate_block_prob``;
    3. each block's head count is resampled with ``mutate_block_prob``;
    4. with ``mutate_embed_prob`` resample the embedding width.

    As in AutoFormer the child may equal the parent; the search loop's cache absorbs that.
    """
    num_heads = list(arch.num_heads)
    mlp_ratio = list(arch.mlp_ratio)
    depth = arch.depth
    if rng.random() < config.mutate_depth_prob:
        depth = rng.choice(config.depths)
        if depth > arch.depth:
            extra = depth - arch.depth
            mlp_ratio += [rng.choice(config.mlp_ratios) for _ in range(extra)]
            num_heads += [rng.choice(config.num_heads) for _ in range(extra)]
        else:
            mlp_ratio, num_heads = mlp_ratio[:depth], num_heads[:depth]
    for i in range(depth):
        if rng.random() < config.mutate_block_prob:
            mlp_ratio[i] = rng.choice(config.mlp_ratios)
    for i in range(depth):
        if rng.random() < config.mutate_block_prob:
            num_heads[i] = rng.choice(config.num_heads)
    embed_dim = arch.embed_dim
    if rng.random() < config.mutate_embed_prob:
        embed_dim = rng.choice(config.embed_dims)
    return ViTArch(
        embed_dim=embed_dim, depth=depth, num_heads=tuple(num_heads), mlp_ratio=tuple(mlp_ratio)
    )


def crossover_archs(a: ViTArch, b: ViTArch, rng: random.Random) -> ViTArch:
    """Per-gene uniform crossover.

    For parents of equal depth this is exactly AutoFormer's operator: every gene (embed width
    and each block's heads and MLP ratio) comes from either parent with probability 1/2.
    AutoFormer only pairs parents of equal depth; so that a caller need not know that rule, we
    extend it to unequal depths: the child's depth is itself a gene drawn from either parent,
    blocks that both parents have are crossed gene by gene, and the remaining blocks (present
    only in the deeper parent) are inherited from it unchanged. The child is always valid when
    both parents are.
    """
    depth = rng.choice((a.depth, b.depth))
    embed_dim = rng.choice((a.embed_dim, b.embed_dim))
    deeper = a if a.depth >= b.depth else b
    shared = min(a.depth, b.depth)
    num_heads, mlp_ratio = [], []
    for i in range(depth):
        if i < shared:
            num_heads.append(rng.choice((a.num_heads[i], b.num_heads[i])))
            mlp_ratio.append(rng.choice((a.mlp_ratio[i], b.mlp_ratio[i])))
        else:
            num_heads.append(deeper.num_heads[i])
            mlp_ratio.append(deeper.mlp_ratio[i])
    return ViTArch(
        embed_dim=embed_dim, depth=depth, num_heads=tuple(num_heads), mlp_ratio=tuple(mlp_ratio)
    )
