"""The cell family's plain-Python side: NB201 strings and indices, DARTS genotype text, the
flat encodings, costs against published figures, the selection rules, and config checks."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from search_spaces import build_from_spec, build_space
from search_spaces.cell import (
    CellSpaceConfig,
    DartsArch,
    NB201Arch,
    from_genotype_text,
    from_index,
    from_nb201_string,
    to_genotype_text,
    to_index,
    to_nb201_string,
)
from search_spaces.cell.arch import DARTS_EDGES, NB201_NUM_CELLS
from search_spaces.cell.ops import DARTS_OPS, NB201_OPS

_TOP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|"
C10_OPTIMUM = _TOP + "nor_conv_1x1~1|nor_conv_3x3~2|"
DRNAS_CELL = _TOP + "nor_conv_3x3~1|nor_conv_3x3~2|"
RESNET_CELL = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"

DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
"""DARTS's published second-order genotype (``cnn/genotypes.py``, ``DARTS_V2``)."""


@pytest.fixture(scope="module")
def nb201():
    return build_space("cell", "nas-bench-201")


@pytest.fixture(scope="module")
def darts():
    return build_space("cell", "darts")


# ---- NAS-Bench-201 strings and indices ---------------------------------------------------------
def test_every_nb201_cell_round_trips_through_string_and_index():
    seen = set()
    for index in range(NB201_NUM_CELLS):
        arch = from_index(index)
        text = to_nb201_string(arch)
        assert to_index(arch) == index
        assert from_nb201_string(text) == arch
        seen.add(text)
    assert len(seen) == NB201_NUM_CELLS == 5**6


def test_nb201_fixtures_parse_to_the_documented_edges():
    arch = from_nb201_string(C10_OPTIMUM)
    assert arch.ops == (
        "nor_conv_3x3",  # 1<-0
        "nor_conv_3x3",  # 2<-0
        "nor_conv_3x3",  # 2<-1
        "skip_connect",  # 3<-0
        "nor_conv_1x1",  # 3<-1
        "nor_conv_3x3",  # 3<-2
    )
    assert to_nb201_string(arch) == C10_OPTIMUM
    # base 5, AutoDL op order (none 0, skip 1, conv1x1 2, conv3x3 3, pool 4), first edge first
    assert to_index(arch) == int("333123", 5)
    assert to_index(NB201Arch(("none",) * 6)) == 0
    assert to_index(NB201Arch(("avg_pool_3x3",) * 6)) == 5**6 - 1
    assert from_nb201_string(RESNET_CELL).ops == (
        "nor_conv_3x3",
        "none",
        "nor_conv_3x3",
        "skip_connect",
        "none",
        "skip_connect",
    )


def test_nb201_cells_agree_with_the_table_keys_of_nb201_md():
    """research/nb201.md section 4: (2,2,0,2,3,2) is the C10 optimum in NASLib tuple order."""
    from search_spaces.cell.table import naslib_tuple

    assert naslib_tuple(from_nb201_string(C10_OPTIMUM)) == (2, 2, 0, 2, 3, 2)
    assert naslib_tuple(from_nb201_string(DRNAS_CELL)) == (2, 2, 0, 2, 2, 2)
    assert naslib_tuple(from_nb201_string(RESNET_CELL)) == (2, 1, 0, 2, 1, 0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "3 nodes"),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|+" + C10_OPTIMUM.split("+")[2], "op~0"),
        (C10_OPTIMUM.replace("nor_conv_1x1", "conv_5x5"), "conv_5x5"),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+" + C10_OPTIMUM.split("+")[2], "exactly 2"),
        ("nor_conv_3x3~0+a+b", "node 1"),
    ],
)
def test_bad_nb201_strings_say_what_is_allowed(text, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as info:
        from_nb201_string(text)
    assert "allowed" in str(info.value)


@pytest.mark.parametrize("index", [-1, 5**6, 1.0, True, "3"])
def test_bad_nb201_indices_are_rejected(index):
    with pytest.raises(ValueError, match="allowed"):
        from_index(index)


def test_describe_and_parse_use_the_nb201_string(nb201):
    arch = from_nb201_string(C10_OPTIMUM)
    assert nb201.describe(arch) == C10_OPTIMUM
    assert nb201.parse(C10_OPTIMUM) == arch
    assert nb201.parse(nb201.to_json(arch)) == arch
    with pytest.raises(ValueError, match="allowed"):
        nb201.parse("|nor_conv_3x3~0|")


# ---- DARTS genotype text ------------------------------------------------------------------------
def test_darts_v2_genotype_round_trips_in_canonical_order(darts):
    arch = from_genotype_text(DARTS_V2)
    # node 4's pairs were written input 1 first; canonically the smaller input comes first
    assert arch.normal[4:6] == (("skip_connect", 0), ("sep_conv_3x3", 1))
    assert arch.reduce[2:4] == (("max_pool_3x3", 1), ("skip_connect", 2))
    text = to_genotype_text(arch)
    assert text.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ")
    assert "normal_concat=range(2, 6)" in text and text.endswith("reduce_concat=range(2, 6))")
    assert from_genotype_text(text) == arch
    assert darts.describe(arch) == text
    assert darts.parse(text) == arch == darts.parse(DARTS_V2)
    assert darts.parse(darts.to_json(arch)) == arch


def test_darts_arch_has_one_representation_per_cell():
    gene = (("sep_conv_3x3", 1), ("skip_connect", 0)) + (
        ("max_pool_3x3", 0),
        ("dil_conv_3x3", 1),
    ) * 3
    a = DartsArch(normal=gene, reduce=gene)
    b = DartsArch(normal=[list(p) for p in gene], reduce=list(gene))
    assert a == b and hash(a) == hash(b)
    assert a.normal[:2] == (("skip_connect", 0), ("sep_conv_3x3", 1))


def test_random_genotypes_round_trip_through_text(darts):
    rng = random.Random(0)
    for _ in range(200):
        arch = darts.sample(rng)
        assert from_genotype_text(to_genotype_text(arch)) == arch


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "Genotype(normal=__import__('os').system('true'), normal_concat=range(2, 6), "
            "reduce=[], reduce_concat=range(2, 6))",
            "Genotype",
        ),
        (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5]"), "normal_concat"),
        (DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 9)"), "normal[7]"),
        (DARTS_V2.replace("('dil_conv_3x3', 2)", "('none', 2)"), "normal[7]"),
        (
            DARTS_V2.replace(
                "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)",
                "('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0)",
            ),
            "normal[1]",
        ),
        (
            "Genotype(normal=[(1, 2, 3)], normal_concat=range(2, 6), reduce=[], "
            "reduce_concat=range(2, 6))",
            "normal",
        ),
        ("not a genotype", "Genotype"),
    ],
)
def test_bad_genotype_text_is_rejected(text, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as info:
        from_genotype_text(text)
    assert "allowed" in str(info.value)


# ---- costs against published figures ------------------------------------------------------------
def test_nb201_cost_range_is_the_benchmarks(nb201):
    """NB201's API gives 0.073306 .. 1.531546 MB params and 7.78305 .. 220.11969 MFLOPs over its
    CIFAR-10 cells (all-none .. all-conv3x3); its FLOPs also count the 10 classifier biases."""
    lo, hi = nb201.cost(nb201.smallest()), nb201.cost(nb201.largest())
    assert lo == {"params": 73_306, "flops": 7_783_040}
    assert hi == {"params": 1_531_546, "flops": 220_119_680}
    assert (lo["flops"] + 10, hi["flops"] + 10) == (7_783_050, 220_119_690)


def test_darts_v2_final_network_has_the_published_parameter_count():
    """DARTS's train.py logs ``param size = 3.349342MB`` for DARTS_V2 in the 20-cell, C=36
    CIFAR-10 network (auxiliary head excluded), which is our network with those overrides."""
    space = build_space("cell", "darts", {"layers": 20, "channels": 36})
    arch = from_genotype_text(DARTS_V2)
    assert space.cost(arch)["params"] == 3_349_342
    with torch.device("meta"):
        model = build_from_spec(json.loads(json.dumps(space.export_spec(arch))))
    assert sum(p.numel() for p in model.parameters()) == 3_349_342


# ---- flat encodings -----------------------------------------------------------------------------
def test_nb201_encoding_is_one_op_per_edge(nb201):
    arch = from_nb201_string(C10_OPTIMUM)
    flat = nb201.encode(arch)
    assert flat == {f"edge_{e}": op for e, op in enumerate(arch.ops)}
    with pytest.raises(ValueError, match=r"edge_4='conv_5x5'.*allowed"):
        nb201.decode({**flat, "edge_4": "conv_5x5"})


def test_darts_encoding_has_only_valid_input_pairs(darts):
    arch = from_genotype_text(DARTS_V2)
    flat = darts.encode(arch)
    assert flat["normal_node4_inputs"] == "0,1"
    assert flat["normal_node4_op0"] == "skip_connect" and flat["normal_node4_op1"] == "sep_conv_3x3"
    assert flat["reduce_node5_inputs"] == "1,2"
    dists = darts.distributions()
    assert dists["normal_node2_inputs"].choices == ("0,1",)
    assert dists["reduce_node5_inputs"].choices == (
        "0,1",
        "0,2",
        "0,3",
        "0,4",
        "1,2",
        "1,3",
        "1,4",
        "2,3",
        "2,4",
        "3,4",
    )
    assert "none" not in dists["normal_node3_op0"].choices
    for bad in ("1,1", "0,5", "2,1", 3):
        with pytest.raises(ValueError, match=r"normal_node4_inputs.*allowed"):
            darts.decode({**flat, "normal_node4_inputs": bad})
    with pytest.raises(ValueError, match=r"reduce_node3_op1='none'.*allowed"):
        darts.decode({**flat, "reduce_node3_op1": "none"})


def test_darts_smallest_and_largest_bound_every_op_and_input_choice(darts):
    """Beyond the contract's random archs: every single-pair change of the extremes."""
    lo, hi = darts.cost(darts.smallest()), darts.cost(darts.largest())
    for base in (darts.smallest(), darts.largest()):
        for name in ("normal", "reduce"):
            for p in range(8):
                for op in DARTS_OPS[1:]:
                    for src in range(2 + p // 2):
                        gene = list(getattr(base, name))
                        gene[p] = (op, src)
                        if gene[p ^ 1][1] == src:
                            continue
                        arch = DartsArch(
                            **{"normal": base.normal, "reduce": base.reduce, name: tuple(gene)}
                        )
                        cost = darts.cost(arch)
                        assert lo["params"] <= cost["params"] <= hi["params"]
                        assert lo["flops"] <= cost["flops"] <= hi["flops"]


def test_mutation_changes_exactly_one_gene(nb201, darts):
    rng = random.Random(5)
    for _ in range(100):
        a = nb201.sample(rng)
        child = nb201.mutate(a, rng)
        assert sum(x != y for x, y in zip(a.ops, child.ops, strict=True)) == 1
        d = darts.sample(rng)
        kid = darts.mutate(d, rng)
        diff = [
            (t, p)
            for t in ("normal", "reduce")
            for p in range(8)
            if getattr(d, t)[p] != getattr(kid, t)[p]
        ]
        # one pair changed; a changed input may swap it with its sibling (canonical order)
        assert 1 <= len(diff) <= 2 and len({(t, p // 2) for t, p in diff}) == 1


# ---- selection rules ----------------------------------------------------------------------------
def test_nb201_select_is_the_argmax_with_none_allowed(nb201):
    scores = torch.full((6, 5), 0.1)
    winners = ["none", "nor_conv_3x3", "skip_connect", "avg_pool_3x3", "none", "nor_conv_1x1"]
    for e, op in enumerate(winners):
        scores[e, NB201_OPS.index(op)] = 0.6
    arch = nb201.select({"cell": scores})
    assert arch.ops == tuple(winners)
    assert nb201.select({"cell": scores.tolist()}) == arch  # nested lists too
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = torch.rand(6, 5, generator=rng)
        assert nb201.select({"cell": m}).ops == tuple(NB201_OPS[i] for i in m.argmax(1).tolist())


def test_nb201_select_checks_the_scores(nb201):
    with pytest.raises(ValueError, match=r"shape \(5, 5\).*allowed: \(6, 5\)"):
        nb201.select({"cell": torch.rand(5, 5)})
    with pytest.raises(ValueError, match=r"cell types \['normal'\].*allowed"):
        nb201.select({"normal": torch.rand(6, 5)})
    with pytest.raises(ValueError, match="non-finite"):
        nb201.select({"cell": torch.full((6, 5), float("nan"))})
    with pytest.raises(ValueError, match="numeric"):
        nb201.select({"cell": [["a"] * 5] * 6})


def _darts_reference_parse(weights: list[list[float]]) -> list[tuple[str, int]]:
    """DARTS ``model_search.Network.genotype._parse``, transcribed (PRIMITIVES order)."""
    gene, n, start = [], 2, 0
    none = DARTS_OPS.index("none")
    for i in range(4):
        end = start + n
        w = weights[start:end]
        edges = sorted(
            range(i + 2), key=lambda x: -max(w[x][k] for k in range(len(w[x])) if k != none)
        )[:2]
        for j in edges:
            k_best = None
            for k in range(len(w[j])):
                if k != none and (k_best is None or w[j][k] > w[j][k_best]):
                    k_best = k
            gene.append((DARTS_OPS[k_best], j))
        start = end
        n += 1
    return gene


def test_darts_select_follows_the_genotype_rule_when_none_wins_an_edge(darts):
    normal = torch.full((14, 8), 0.01)
    # node 2: edges from 0 and 1 (both kept: a node keeps 2 of its inputs)
    normal[0, DARTS_OPS.index("sep_conv_3x3")] = 0.5
    normal[1, DARTS_OPS.index("dil_conv_5x5")] = 0.4
    # node 3 (rows 2..4): edge 3<-0 has `none` on top but a weak best real op; 3<-1 and 3<-2 win
    normal[2, DARTS_OPS.index("none")] = 0.9
    normal[2, DARTS_OPS.index("max_pool_3x3")] = 0.05
    normal[3, DARTS_OPS.index("skip_connect")] = 0.3
    normal[4, DARTS_OPS.index("avg_pool_3x3")] = 0.2
    # node 4 (rows 5..8): the best real ops sit on 4<-3 and 4<-0
    normal[8, DARTS_OPS.index("sep_conv_5x5")] = 0.7
    normal[5, DARTS_OPS.index("dil_conv_3x3")] = 0.6
    normal[6, DARTS_OPS.index("none")] = 0.99
    # node 5 (rows 9..13): 5<-4 and 5<-2
    normal[13, DARTS_OPS.index("max_pool_3x3")] = 0.8
    normal[11, DARTS_OPS.index("sep_conv_3x3")] = 0.3
    reduce = torch.rand(14, 8, generator=torch.Generator().manual_seed(3))
    arch = darts.select({"normal": normal, "reduce": reduce})
    assert arch.normal == (
        ("sep_conv_3x3", 0),
        ("dil_conv_5x5", 1),
        ("skip_connect", 1),
        ("avg_pool_3x3", 2),
        ("dil_conv_3x3", 0),
        ("sep_conv_5x5", 3),
        ("sep_conv_3x3", 2),
        ("max_pool_3x3", 4),
    )
    expected = DartsArch(
        normal=tuple(_darts_reference_parse(normal.tolist())),
        reduce=tuple(_darts_reference_parse(reduce.tolist())),
    )
    assert arch == expected
    darts.validate(arch)


def test_darts_select_matches_the_reference_on_random_importances(darts):
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        scores = {t: torch.rand(14, 8, generator=gen).softmax(1) for t in ("normal", "reduce")}
        ref = DartsArch(**{t: tuple(_darts_reference_parse(s.tolist())) for t, s in scores.items()})
        assert darts.select(scores) == ref


def test_darts_select_checks_the_scores(darts):
    ok = torch.rand(14, 8)
    with pytest.raises(ValueError, match=r"scores\['reduce'\] has shape \(14, 7\)"):
        darts.select({"normal": ok, "reduce": torch.rand(14, 7)})
    with pytest.raises(ValueError, match=r"allowed: exactly \['normal', 'reduce'\]"):
        darts.select({"normal": ok})


def test_selection_labels_name_the_rows_and_columns(nb201, darts):
    edges, ops = nb201.selection_labels()["cell"]
    assert edges == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"] and ops == list(NB201_OPS)
    labels = darts.selection_labels()
    assert list(labels) == ["normal", "reduce"]
    edges, ops = labels["reduce"]
    assert len(edges) == len(DARTS_EDGES) == 14 and edges[:3] == ["2<-0", "2<-1", "3<-0"]
    assert ops == list(DARTS_OPS) and ops[0] == "none"


# ---- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preset", "overrides", "field"),
    [
        ("nb201-28", {"kind": "nb301"}, "kind"),
        ("nb201-28", {"selector": "gdas"}, "selector"),
        ("nb201-28", {"img_size": 30}, "img_size"),
        ("nb201-28", {"channels": 0}, "channels"),
        ("nb201-28", {"cells_per_stage": True}, "cells_per_stage"),
        ("nb201-28", {"layers": 8}, "layers"),
        ("nb201-28", {"it_heads": 3}, "it_heads"),
        ("nb201-28", {"it_layers": 0}, "it_layers"),
        ("darts-28", {"channels": 7}, "channels"),
        ("darts-28", {"layers": 2}, "layers"),
        ("darts-28", {"cells_per_stage": 2}, "cells_per_stage"),
        ("darts-28", {"stem_multiplier": 0}, "stem_multiplier"),
    ],
)
def test_config_errors_name_the_field_and_the_allowed_values(preset, overrides, field):
    with pytest.raises(ValueError, match=re.escape(field)) as info:
        build_space("cell", preset, overrides)
    assert "allowed" in str(info.value)


def test_presets_and_dispatch():
    from search_spaces import get_family, list_presets

    assert list_presets("cell") == ["nas-bench-201", "nb201-28", "darts", "darts-28"]
    family = get_family("cell")
    assert family.default_preset == "nb201-28" and family.config_type is CellSpaceConfig
    assert type(build_space("cell")).__name__ == "NB201Space"
    assert type(build_space("cell", "darts-28")).__name__ == "DartsSpace"
    space = build_space("cell", "nas-bench-201")
    assert space.input_shape == (3, 32, 32) and space.num_classes == 10
    assert space.config.cells_per_stage == 5 and space.config.channels == 16
    darts = build_space("cell", "darts").config
    assert (darts.layers, darts.stem_multiplier, darts.reduction_layers) == (8, 3, (2, 5))
