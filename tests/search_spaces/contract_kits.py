"""Family-specific knowledge the shared contract needs, one :class:`ContractKit` per family.

A new family adds its kit here; ``test_search_space_contract.py`` fails for a registered family
without one, so no family can skip the contract by accident.
"""

from __future__ import annotations

from typing import Any

from search_spaces.cell import DartsArch, NB201Arch
from search_spaces.lowrank import LowRankArch
from search_spaces.vit import ViTArch, ViTSpace
from tests.search_spaces.search_space_contract import ContractKit, SupernetBudget


def vit_bad_archs(space: ViTSpace) -> list[tuple[Any, str]]:
    """One invalid arch per kind of mistake, with the field its error must name."""
    c = space.config
    good = space.largest()
    d = good.depth
    not_an_embed = max(c.embed_dims) + 1
    not_a_depth = max(c.depths) + 1
    return [
        (ViTArch(not_an_embed, d, good.num_heads, good.mlp_ratio), "embed_dim"),
        (ViTArch(float(good.embed_dim), d, good.num_heads, good.mlp_ratio), "embed_dim"),
        (
            ViTArch(
                good.embed_dim,
                not_a_depth,
                (c.num_heads[0],) * not_a_depth,
                (c.mlp_ratios[0],) * not_a_depth,
            ),
            "depth",
        ),
        (ViTArch(good.embed_dim, d, good.num_heads[:-1], good.mlp_ratio), "num_heads"),
        (ViTArch(good.embed_dim, d, good.num_heads, good.mlp_ratio + (1.0,)), "mlp_ratio"),
        (
            ViTArch(
                good.embed_dim,
                d,
                (c.num_heads[0], max(c.num_heads) + 1) + good.num_heads[2:],
                good.mlp_ratio,
            ),
            "num_heads[1]",
        ),
        (ViTArch(good.embed_dim, d, (True,) + good.num_heads[1:], good.mlp_ratio), "num_heads[0]"),
        (
            ViTArch(
                good.embed_dim,
                d,
                good.num_heads,
                good.mlp_ratio[:2] + (max(c.mlp_ratios) + 0.25,) + good.mlp_ratio[3:],
            ),
            "mlp_ratio[2]",
        ),
    ]


def vit_budget(preset: str) -> SupernetBudget:
    """ImageNet-sized presets run their supernet tests on 32x32 inputs (2x2 patches + class
    token): every width, depth and head choice is as in the preset, only the token count
    shrinks. test_vit_supernet.py checks autoformer-tiny at 224x224 as well."""
    if preset == "autoformer-tiny":
        return SupernetBudget(batch=1, random_archs=1, overrides={"img_size": 32})
    if preset.startswith("autoformer-"):
        return SupernetBudget(batch=1, random_archs=0, overrides={"img_size": 32})
    # test_vit_supernet.py checks 20+ random archs of the small-image presets
    return SupernetBudget(batch=4, random_archs=1)


def cell_bad_archs(space: Any) -> list[tuple[Any, str]]:
    """One invalid cell per kind of mistake (NB201Arch or DartsArch by the space's kind)."""
    good = space.largest()
    if isinstance(good, NB201Arch):
        ops = good.ops
        return [
            (NB201Arch(ops[:2] + ("conv_5x5",) + ops[3:]), "ops[2]"),
            (NB201Arch(ops[:-1]), "ops"),
            (NB201Arch(ops + ("none",)), "ops"),
            (NB201Arch((3,) + ops[1:]), "ops[0]"),
            (NB201Arch("nor_conv_3x3"), "ops"),
        ]
    assert isinstance(good, DartsArch)
    n, r = list(good.normal), good.reduce
    return [
        (DartsArch(tuple(n[:3] + [("conv_7x1_1x7", 1)] + n[4:]), r), "normal[3]"),
        (DartsArch(tuple(n[:1] + [("none", 1)] + n[2:]), r), "normal[1]"),
        (DartsArch(tuple(n[:-1]), r), "normal"),
        (DartsArch(good.normal, r[:5] + (("sep_conv_5x5", 4),) + r[6:]), "reduce[5]"),
        (DartsArch(good.normal, r[:6] + (("sep_conv_5x5", 1), ("sep_conv_5x5", 1))), "reduce[7]"),
        (DartsArch(good.normal, r[:2] + (("sep_conv_5x5", True),) + r[3:]), "reduce[2]"),
        (DartsArch(good.normal, r[:6] + ("sep_conv_5x5",) + r[7:]), "reduce[6]"),
    ]


def cell_budget(preset: str) -> SupernetBudget:
    """Cell supernets are small; the CIFAR-scale presets check fewer random archs.
    test_cell_supernet.py checks more archs on the small presets."""
    if preset in ("nas-bench-201", "darts"):
        return SupernetBudget(batch=2, random_archs=1)
    return SupernetBudget(batch=2, random_archs=2)


def lowrank_bad_archs(space: Any) -> list[tuple[Any, str]]:
    """One invalid low-rank arch per kind of mistake."""
    good = space.largest().ranks
    not_a_ratio = 0.99 if 0.99 not in space.config.rank_ratios else 0.011
    return [
        (LowRankArch(good[:-1]), "ranks"),
        (LowRankArch(((not_a_ratio,) + good[0][1:],) + good[1:]), "ranks[0]"),
        (LowRankArch(good[:1] + (good[1][:-1],) + good[2:]), "ranks[1]"),
        (LowRankArch(good[:2] + ((True,) + good[2][1:],) + good[3:]), "ranks[2]"),
        (LowRankArch(good[:1] + ("1.0/1.0/1.0",) + good[2:]), "ranks[1]"),
    ]


def lowrank_budget(preset: str) -> SupernetBudget:
    """DeiT-shaped presets run their supernet tests on 32x32 inputs (2x2 patches + class
    token): every width and rank choice is as in the preset, only the token count shrinks."""
    if preset.startswith("deit-"):
        return SupernetBudget(batch=1, random_archs=1, overrides={"img_size": 32})
    return SupernetBudget(batch=4, random_archs=3)


KITS: dict[str, ContractKit] = {
    "lowrank": ContractKit(bad_archs=lowrank_bad_archs, budget=lowrank_budget),
    "vit": ContractKit(bad_archs=vit_bad_archs, budget=vit_budget),
    "cell": ContractKit(bad_archs=cell_bad_archs, budget=cell_budget),
}
