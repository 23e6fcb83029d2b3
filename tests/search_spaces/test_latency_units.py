"""``latency_units`` of the low-rank and cell families: the MAC-sized kernels sum to the
analytic ``cost()["flops"]``, each family uses its fixed set of kinds, and changing one choice
changes exactly the kernels it should."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from search_spaces import build_space
from search_spaces.cell.arch import DartsArch, NB201Arch

LOWRANK_KINDS = {"patch_embed", "norm", "linear", "linear_factored", "attention", "head"}
NB201_KINDS = {"stem", "reduction_block", "head"} | {
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
}
DARTS_KINDS = {"stem", "preprocess", "factorized_reduce", "head"} | {
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
}
ELEMENT_KINDS = {"norm", "skip_connect", "avg_pool_3x3", "max_pool_3x3"}
"""Kinds sized by elements, not MACs."""


def _macs(units: list[tuple[str, float]]) -> float:
    return sum(size for kind, size in units if kind not in ELEMENT_KINDS)


def _diff(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> tuple[Counter, Counter]:
    """(units only in ``a``, units only in ``b``), as multisets."""
    ca, cb = Counter(a), Counter(b)
    return ca - cb, cb - ca


@pytest.mark.parametrize(
    ("preset", "kinds"),
    [("nb201-28", NB201_KINDS), ("darts-28", DARTS_KINDS)],
)
def test_cell_units_sum_to_the_analytic_macs(preset: str, kinds: set[str]) -> None:
    space = build_space("cell", preset)
    rng = random.Random(0)
    seen: set[str] = set()
    for arch in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(8)]:
        units = space.latency_units(arch)
        assert _macs(units) == pytest.approx(space.cost(arch)["flops"], rel=0.02)
        assert {k for k, _ in units} <= kinds
        assert all(size >= 0 for _, size in units)
        seen |= {k for k, _ in units}
    assert {"stem", "head"} <= seen


def test_lowrank_units_sum_to_the_analytic_macs() -> None:
    space = build_space("lowrank", "vit-28")
    rng = random.Random(0)
    archs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(8)]
    for arch in archs:
        units = space.latency_units(arch)
        assert _macs(units) == pytest.approx(space.cost(arch)["flops"], rel=0.02)
        assert {k for k, _ in units} <= LOWRANK_KINDS
        assert {"patch_embed", "norm", "attention", "head"} <= {k for k, _ in units}
        linears = sum(k in ("linear", "linear_factored") for k, _ in units)
        factored = sum(k == "linear_factored" for k, _ in units)
        assert factored % 2 == 0 and linears - factored // 2 == 4 * space.config.depth
    assert {k for k, _ in space.latency_units(space.largest())} == LOWRANK_KINDS - {
        "linear_factored"
    }
    assert "linear_factored" in {k for k, _ in space.latency_units(space.smallest())}


def test_one_lowrank_ratio_changes_one_layer_kernels() -> None:
    space = build_space("lowrank", "vit-28")  # embed 64, q-k-v 3 x 64 wide, ratios of 1/4
    c = space.config
    n = c.num_tokens
    dense = space.largest()
    assert c.layers == ("qkv", "fc1", "fc2")

    def with_qkv(ratio: float):
        block0 = (ratio, 1.0, 1.0)
        return type(dense)((block0,) + dense.ranks[1:])

    # rank 16 of 64 -> 192: two factors (16 x 256 < 64 x 192)
    removed, added = _diff(space.latency_units(dense), space.latency_units(with_qkv(0.25)))
    assert removed == Counter({("linear", float(n * 64 * 192)): 1})
    assert added == Counter(
        {("linear_factored", float(n * 64 * 16)): 1, ("linear_factored", float(n * 16 * 192)): 1}
    )
    # rank 48: two factors would cost 48 x 256 = 64 x 192, so it runs fused, as the dense layer
    assert space.latency_units(with_qkv(0.75)) == space.latency_units(dense)


def test_one_nb201_op_changes_its_units_in_every_cell() -> None:
    space = build_space("cell", "nb201-28")  # C = 8, 2 cells per stage, 28 -> 14 -> 7 px
    c = space.config
    base = NB201Arch(("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "none", "none"))
    other = NB201Arch(("nor_conv_1x1",) + base.ops[1:])
    removed, added = _diff(space.latency_units(base), space.latency_units(other))
    stages = [(8 * 2**s, (28 // 2**s) ** 2) for s in range(3)]  # (channels, pixels)
    n = c.cells_per_stage
    # (a conv's MACs are the same in every stage: a quarter of the pixels, twice the channels)
    assert removed == Counter(
        ("nor_conv_3x3", float(hw * ch * ch * 9)) for ch, hw in stages for _ in range(n)
    )
    assert added == Counter(
        ("nor_conv_1x1", float(hw * ch * ch)) for ch, hw in stages for _ in range(n)
    )
    # ``none`` runs nothing: dropping an edge to it removes its unit from every cell
    emptier = NB201Arch(base.ops[:3] + ("none",) + base.ops[4:])
    removed, added = _diff(space.latency_units(base), space.latency_units(emptier))
    assert removed == Counter(
        ("avg_pool_3x3", float(hw * ch)) for ch, hw in stages for _ in range(n)
    )
    assert not added


def test_one_darts_op_changes_its_units_in_cells_of_its_type() -> None:
    space = build_space("cell", "darts-28")  # C = 8, 5 cells, reductions at cells 1 and 3
    gene = (
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
        ("max_pool_3x3", 1),
        ("avg_pool_3x3", 3),
        ("dil_conv_5x5", 0),
        ("sep_conv_5x5", 4),
    )
    base = DartsArch(normal=gene, reduce=gene)
    # normal cells 0, 2, 4 run at C = 8, 16, 32 on 28, 14, 7 px
    normal = [(8, 28 * 28), (16, 14 * 14), (32, 7 * 7)]
    swapped = (("sep_conv_5x5", 0),) + gene[1:]
    removed, added = _diff(
        space.latency_units(base), space.latency_units(DartsArch(normal=swapped, reduce=gene))
    )
    assert removed == Counter(
        ("sep_conv_3x3", float(2 * hw * (ch * 9 + ch * ch))) for ch, hw in normal
    )
    assert added == Counter(
        ("sep_conv_5x5", float(2 * hw * (ch * 25 + ch * ch))) for ch, hw in normal
    )
    # skip_connect from a cell input: an identity in a normal cell, a FactorizedReduce in a
    # reduction cell (cells 1 and 3: C = 16, 32 at 14, 7 px)
    units = space.latency_units(base)
    skips = [u for u in units if u[0] == "skip_connect"]
    assert skips == [("skip_connect", float(hw * ch)) for ch, hw in normal]
    strided = [(16, 14 * 14), (32, 7 * 7)]
    reduce_skips = {("factorized_reduce", float(hw * ch * ch)) for ch, hw in strided}
    assert reduce_skips <= set(units)
