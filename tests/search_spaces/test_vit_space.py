"""ViT search space: presets, AutoFormer operators, encoding details, config validation."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from search_spaces import build_space
from search_spaces.vit import PRESETS, ViTArch, ViTSpace

# ---- presets ----------------------------------------------------------------------------------

DESIGN_4_1 = {
    # preset: (supernet embed/heads/depth/mlp max, embed, heads, mlp ratios, depths)
    "autoformer-tiny": ((256, 4, 14, 4.0), (192, 216, 240), (3, 4), (3.5, 4.0), (12, 13, 14)),
    "autoformer-small": (
        (448, 7, 14, 4.0),
        (320, 384, 448),
        (5, 6, 7),
        (3.0, 3.5, 4.0),
        (12, 13, 14),
    ),
    "autoformer-base": (
        (640, 10, 16, 4.0),
        (528, 576, 624),
        (9, 10),
        (3.0, 3.5, 4.0),
        (14, 15, 16),
    ),
}


@pytest.mark.parametrize("preset", sorted(DESIGN_4_1))
def test_autoformer_presets_match_design(preset: str) -> None:
    (max_e, max_h, max_d, max_r), embeds, heads, ratios, depths = DESIGN_4_1[preset]
    cfg = PRESETS[preset]
    assert (cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.num_classes, cfg.head_dim) == (
        224,
        16,
        3,
        1000,
        64,
    )
    assert (cfg.embed_dims, cfg.num_heads, cfg.mlp_ratios, cfg.depths) == (
        embeds,
        heads,
        ratios,
        depths,
    )
    assert (cfg.max_embed_dim, cfg.max_heads, cfg.max_depth, max(cfg.mlp_ratios)) == (
        max_e,
        max_h,
        max_d,
        max_r,
    )
    assert (cfg.mutate_depth_prob, cfg.mutate_embed_prob, cfg.mutate_block_prob) == (0.4, 0.4, 0.2)


@pytest.mark.parametrize(
    ("preset", "published"),
    [("autoformer-tiny", 5.7e6), ("autoformer-small", 22.9e6), ("autoformer-base", 53.7e6)],
)
def test_param_range_contains_published_autoformer_size(preset: str, published: float) -> None:
    space = build_space("vit", preset)
    lo = space.cost(space.smallest())["params"]
    hi = space.cost(space.largest())["params"]
    assert lo < published < hi, (lo, hi)


@pytest.mark.parametrize(("preset", "shape"), [("vit-28", (1, 28, 28)), ("vit-32", (3, 32, 32))])
def test_small_image_presets(preset: str, shape: tuple[int, int, int]) -> None:
    space = build_space("vit", preset)
    assert space.input_shape == shape and space.num_classes == 10
    # sized for ~1 min/epoch on 2 CPU threads: keep the largest subnet small
    assert space.cost(space.largest())["params"] < 500_000
    assert space.cost(space.largest())["flops"] < 25_000_000


def test_default_preset_is_the_small_image_one() -> None:
    assert build_space("vit").config == PRESETS["vit-28"]


# ---- AutoFormer mutation ------------------------------------------------------------------------


def _space(**overrides: object) -> ViTSpace:
    return build_space("vit", "vit-28", overrides=overrides)


def test_mutation_with_zero_probabilities_is_identity() -> None:
    space = _space(mutate_depth_prob=0.0, mutate_embed_prob=0.0, mutate_block_prob=0.0)
    rng = random.Random(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.mutate(arch, rng) == arch


def test_depth_mutation_truncates_or_extends() -> None:
    space = _space(mutate_depth_prob=1.0, mutate_embed_prob=0.0, mutate_block_prob=0.0)
    rng = random.Random(1)
    seen = Counter()
    for _ in range(300):
        arch = space.sample(rng)
        child = space.mutate(arch, rng)
        keep = min(arch.depth, child.depth)
        assert child.embed_dim == arch.embed_dim
        assert child.num_heads[:keep] == arch.num_heads[:keep]
        assert child.mlp_ratio[:keep] == arch.mlp_ratio[:keep]
        seen[(child.depth > arch.depth) - (child.depth < arch.depth)] += 1
    assert seen[1] and seen[-1] and seen[0]  # extended, truncated, unchanged all happen


def test_mutation_frequencies_follow_autoformer() -> None:
    """Default probabilities: depth 0.4, embed 0.4, each block's heads and MLP ratio 0.2.
    A resample hits the old value 1/3 of the time (3 choices each in vit-28)."""
    space = _space()
    rng = random.Random(2)
    n, counts, blocks = 4000, Counter(), Counter()
    for _ in range(n):
        arch = space.sample(rng)
        child = space.mutate(arch, rng)
        counts["depth"] += child.depth != arch.depth
        counts["embed"] += child.embed_dim != arch.embed_dim
        for i in range(min(arch.depth, child.depth)):
            blocks["n"] += 1
            blocks["heads"] += child.num_heads[i] != arch.num_heads[i]
            blocks["mlp"] += child.mlp_ratio[i] != arch.mlp_ratio[i]
    assert counts["depth"] / n == pytest.approx(0.4 * 2 / 3, abs=0.03)
    assert counts["embed"] / n == pytest.approx(0.4 * 2 / 3, abs=0.03)
    assert blocks["heads"] / blocks["n"] == pytest.approx(0.2 * 2 / 3, abs=0.02)
    assert blocks["mlp"] / blocks["n"] == pytest.approx(0.2 * 2 / 3, abs=0.02)


def test_mutation_is_reproducible_from_the_rng() -> None:
    space = _space()
    arch = space.largest()
    assert [space.mutate(arch, random.Random(s)) for s in range(20)] == [
        space.mutate(arch, random.Random(s)) for s in range(20)
    ]


# ---- AutoFormer crossover -----------------------------------------------------------------------


def test_crossover_equal_depth_takes_each_gene_from_a_parent() -> None:
    space = _space()
    a = ViTArch(48, 4, (2, 2, 2, 2), (2.0, 2.0, 2.0, 2.0))
    b = ViTArch(80, 4, (4, 4, 4, 4), (4.0, 4.0, 4.0, 4.0))
    rng = random.Random(3)
    from_a = Counter()
    for _ in range(1000):
        child = space.crossover(a, b, rng)
        assert child.depth == 4
        genes = [child.embed_dim, *child.num_heads, *child.mlp_ratio]
        parent_a = [a.embed_dim, *a.num_heads, *a.mlp_ratio]
        parent_b = [b.embed_dim, *b.num_heads, *b.mlp_ratio]
        for i, (g, ga, gb) in enumerate(zip(genes, parent_a, parent_b, strict=True)):
            assert g in (ga, gb)
            from_a[i] += g == ga
    # genes are drawn independently and uniformly
    assert all(400 < c < 600 for c in from_a.values()), from_a
    assert len({space.crossover(a, b, rng) for _ in range(200)}) > 100


def test_crossover_unequal_depth_inherits_the_tail_from_the_deeper_parent() -> None:
    space = _space()
    short = ViTArch(48, 3, (2, 2, 2), (2.0, 2.0, 2.0))
    deep = ViTArch(80, 5, (4, 4, 4, 3, 3), (4.0, 4.0, 4.0, 3.0, 3.0))
    rng = random.Random(4)
    depths = Counter()
    for _ in range(500):
        child = space.crossover(short, deep, rng)
        depths[child.depth] += 1
        for i in range(3):
            assert child.num_heads[i] in (2, 4) and child.mlp_ratio[i] in (2.0, 4.0)
        assert child.num_heads[3:] == deep.num_heads[3 : child.depth]
        assert child.mlp_ratio[3:] == deep.mlp_ratio[3 : child.depth]
    assert set(depths) == {3, 5} and 200 < depths[3] < 300


# ---- encoding -----------------------------------------------------------------------------------


def test_encoding_pads_to_max_depth_with_the_smallest_choice() -> None:
    space = _space()
    arch = ViTArch(64, 3, (3, 4, 2), (3.0, 4.0, 2.0))
    flat = space.encode(arch)
    assert list(flat) == ["embed_dim", "depth"] + [f"num_heads_{i}" for i in range(5)] + [
        f"mlp_ratio_{i}" for i in range(5)
    ]
    assert flat["num_heads_3"] == flat["num_heads_4"] == 2
    assert flat["mlp_ratio_3"] == flat["mlp_ratio_4"] == 2.0
    # padded genes are ignored by decode, whatever they hold
    assert space.decode({**flat, "num_heads_4": 4, "mlp_ratio_3": 4.0}) == arch


def test_decode_names_the_offending_gene() -> None:
    space = _space()
    flat = space.encode(space.largest())
    with pytest.raises(ValueError, match=r"num_heads\[1\]=7 .*allowed: \[2, 3, 4\]"):
        space.decode({**flat, "num_heads_1": 7})
    with pytest.raises(ValueError, match="depth"):
        space.decode({**flat, "depth": 4.0})
    with pytest.raises(ValueError, match="embed_dim"):
        space.decode({**flat, "embed_dim": "64"})


def test_distributions_are_categorical_over_the_choices() -> None:
    from optuna.distributions import CategoricalDistribution

    dists = _space().distributions()
    assert dists["embed_dim"] == CategoricalDistribution((48, 64, 80))
    assert dists["depth"] == CategoricalDistribution((3, 4, 5))
    assert dists["mlp_ratio_4"] == CategoricalDistribution((2.0, 3.0, 4.0))


# ---- identity -----------------------------------------------------------------------------------


def test_arch_id_is_pinned() -> None:
    """Changing the canonical JSON would orphan every exported folder and archive row."""
    space = _space()
    text = space.to_json(space.smallest())
    assert text == '{"depth":3,"embed_dim":48,"mlp_ratio":[2.0,2.0,2.0],"num_heads":[2,2,2]}'
    assert space.arch_id(space.smallest()) == hashlib.sha1(text.encode()).hexdigest()[:12]
    assert space.arch_id(space.smallest()) == "8415f7124396"


def test_lists_and_int_ratios_normalise() -> None:
    a = ViTArch(64, 2, [3, 4], [3, 4])  # as read from YAML
    b = ViTArch(64, 2, (3, 4), (3.0, 4.0))
    assert a == b and hash(a) == hash(b)
    assert isinstance(a.mlp_ratio[0], float)
    _space(depths=[2, 3]).validate(a)


# ---- config validation through overrides ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"patch_size": 5}, "patch_size"),
        ({"img_size": 0}, "img_size"),
        ({"in_chans": 1.5}, "in_chans"),
        ({"num_classes": True}, "num_classes"),
        ({"head_dim": -1}, "head_dim"),
        ({"embed_dims": []}, "embed_dims"),
        ({"embed_dims": [64, 64]}, "embed_dims"),
        ({"embed_dims": ["64"]}, "embed_dims"),
        ({"embed_dims": 64}, "embed_dims"),
        ({"depths": [0, 2]}, "depths"),
        ({"num_heads": [2.5]}, "num_heads"),
        ({"mlp_ratios": [0]}, "mlp_ratios"),
        ({"mlp_ratios": [0.001]}, "mlp_ratios"),
        ({"supernet_embed_dim": 64}, "supernet_embed_dim"),
        ({"drop_path": 1.0}, "drop_path"),
        ({"drop_path_scales_with_embed": "yes"}, "drop_path_scales_with_embed"),
        ({"mutate_block_prob": 1.5}, "mutate_block_prob"),
    ],
)
def test_bad_override_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        build_space("vit", "vit-28", overrides=overrides)
    assert "allowed" in str(info.value)


def test_override_lists_are_normalised() -> None:
    space = _space(embed_dims=[80, 48], mlp_ratios=[3, 2], supernet_embed_dim=96)
    assert space.config.embed_dims == (48, 80)
    assert space.config.mlp_ratios == (2.0, 3.0)
    assert space.config.max_embed_dim == 96
    assert PRESETS["vit-28"].embed_dims == (48, 64, 80)  # presets are never mutated
