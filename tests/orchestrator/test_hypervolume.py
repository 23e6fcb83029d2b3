"""The search's hypervolume (orchestrator.search.pareto): exact volumes of hand-computed fronts
in 2-D, 3-D and 4-D, over flops, params and latency, and the fixed reference point of real
spaces. No Ray, no training: plain rows and the spaces' analytic cost."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from orchestrator.config.schema import SearchConfig
from orchestrator.search.latency import FOLDER, predicted_ms
from orchestrator.search.pareto import (
    REFERENCE_FACTOR,
    hypervolume,
    space_reference,
)
from orchestrator.stages.report import hypervolume_line
from search_spaces import build_space
from tests.helpers.configs import SMALL_SPACE
from trainables.latency_model import LatencyPredictor


def row(acc: float, flops: float | None = None, params: float | None = None, ms=None, aid="x"):
    out = {"arch_id": aid, "val_top1": acc}
    for key, value in (("flops", flops), ("params", params), ("latency_ms", ms)):
        if value is not None:
            out[key] = value
    return out


# ---------------------------------------------------------------------------- 2-D fronts
FLOPS_REF = {"val_top1": 0.0, "flops": 100.0}
# normalised (acc / 100 %, flops / 100): a (0.80, 0.10), b (0.85, 0.20), d (0.90, 0.40)
FRONT_2D = [row(80, flops=10, aid="a"), row(85, flops=20, aid="b"), row(90, flops=40, aid="d")]
# the staircase from the cheapest: a dominates (1 - 0.1) x 0.80 = 0.72, b adds
# (1 - 0.2) x (0.85 - 0.80) = 0.04, d adds (1 - 0.4) x (0.90 - 0.85) = 0.03: 0.79
HV_2D = 0.79


def test_a_two_dimensional_front_by_hand():
    assert hypervolume(FRONT_2D, ["flops"], FLOPS_REF) == pytest.approx(HV_2D)
    # one point: the box to the reference, 0.80 x (1 - 0.10)
    assert hypervolume(FRONT_2D[:1], ["flops"], FLOPS_REF) == pytest.approx(0.72)
    assert hypervolume([], ["flops"], FLOPS_REF) == 0.0


def test_dominated_points_do_not_change_it():
    dominated = [
        row(84, flops=25, aid="c"),  # worse than b in both
        row(80, flops=10, aid="a2"),  # equal to a
        row(70, flops=90, aid="e"),
    ]
    assert hypervolume(FRONT_2D + dominated, ["flops"], FLOPS_REF) == pytest.approx(HV_2D)


def test_points_beyond_the_reference_contribute_nothing():
    beyond = [
        row(99, flops=150, aid="big"),  # costlier than the reference
        row(99, flops=100, aid="edge"),  # exactly at it: a box of zero width
        row(0, flops=1, aid="zero"),  # at the accuracy reference
    ]
    assert hypervolume(FRONT_2D + beyond, ["flops"], FLOPS_REF) == pytest.approx(HV_2D)
    assert hypervolume(beyond, ["flops"], FLOPS_REF) == 0.0


def test_params_and_latency_are_axes_like_flops():
    # params ref 1000: (0.50, 0.50) dominates 0.5 x 0.5 = 0.25; (0.75, 0.75) adds
    # (1 - 0.75) x (0.75 - 0.50) = 0.0625: 0.3125
    rows = [row(50, params=500, aid="p"), row(75, params=750, aid="q")]
    assert hypervolume(rows, ["params"], {"params": 1000.0}) == pytest.approx(0.3125)
    # the same points on the latency axis (archive column latency_ms), reference 4 ms
    rows = [row(50, ms=2.0, aid="p"), row(75, ms=3.0, aid="q")]
    assert hypervolume(rows, ["latency"], {"latency": 4.0}) == pytest.approx(0.3125)
    # a row lacking the objective's value is skipped, not counted as free
    assert hypervolume(rows + [row(99, aid="r")], ["latency"], {"latency": 4.0}) == (
        pytest.approx(0.3125)
    )


# ---------------------------------------------------------------------------- 3-D, 4-D
REF_3D = {"val_top1": 0.0, "flops": 100.0, "params": 10.0}
# as minimised coordinates (1 - acc / 100, flops / 100, params / 10), reference (1, 1, 1):
A = row(60, flops=20, params=5, aid="A")  # (0.4, 0.2, 0.5): box 0.6 x 0.8 x 0.5 = 0.24
B = row(80, flops=50, params=2, aid="B")  # (0.2, 0.5, 0.2): box 0.8 x 0.5 x 0.8 = 0.32
# A and B overlap from (0.4, 0.5, 0.5): 0.6 x 0.5 x 0.5 = 0.15, so A u B = 0.24 + 0.32 - 0.15
HV_AB = 0.41
# D = (0.3, 0.6, 0.1) is dominated by B in (accuracy, flops) but has the fewest params: inside
# D's box, B covers params >= 0.2, A nothing more, so D adds 0.7 x 0.4 x (0.2 - 0.1) = 0.028
D = row(70, flops=60, params=1, aid="D")


def test_a_three_dimensional_front_by_hand():
    assert hypervolume([A, B], ["flops", "params"], REF_3D) == pytest.approx(HV_AB)
    assert hypervolume([A, B, D], ["flops", "params"], REF_3D) == pytest.approx(HV_AB + 0.028)
    # the order of the objectives does not matter
    assert hypervolume([A, B, D], ["params", "flops"], REF_3D) == pytest.approx(0.438)
    # in (accuracy, flops) alone D is dominated: 0.6 x (1 - 0.2) + (0.8 - 0.6) x (1 - 0.5)
    assert hypervolume([A, B, D], ["flops"], REF_3D) == pytest.approx(0.48 + 0.10)


def test_three_dimensional_dominated_and_beyond_points_add_nothing():
    worse = row(55, flops=30, params=6, aid="C")  # (0.45, 0.3, 0.6): worse than A everywhere
    beyond = row(99, flops=10, params=12, aid="E")  # more params than the reference
    assert hypervolume([A, B, D, worse, beyond], ["flops", "params"], REF_3D) == (
        pytest.approx(0.438)
    )


def test_four_objectives():
    # one point (0.5 | 0.5, 0.5, 0.5) of a unit box: 0.5 ** 4; a second one worse in all adds 0
    ref = {"flops": 100.0, "params": 10.0, "latency": 4.0}
    rows = [row(50, 50, 5, 2.0, "a"), row(40, 60, 6, 3.0, "b")]
    assert hypervolume(rows, ["flops", "params", "latency"], ref) == pytest.approx(0.0625)


def test_an_unusable_reference_is_one_clear_error():
    with pytest.raises(ValueError, match=r"'latency': None.*positive reference"):
        hypervolume([row(50, ms=1.0)], ["latency"], {"val_top1": 0.0, "latency": None})
    with pytest.raises(ValueError, match="flops"):
        hypervolume([row(50, flops=1)], ["flops"], {})


# ---------------------------------------------------------------------- reference points
# The largest arch's cost as torch measures the exported model (parameters counted, MACs =
# FlopCounterMode's FLOPs / 2 on the meta device: tests/search_spaces/search_space_contract.py
# `_standalone_cost`, which the contract suite checks SearchSpace.cost against)
LARGEST = {
    ("vit", "vit-28", "small"): {"params": 74698, "flops": 4214112},  # embed 48, depth 3
    ("vit", "vit-28", None): {"params": 369770, "flops": 19583520},  # embed 80, depth 5
    ("cell", "nb201-28", None): {"params": 165090, "flops": 17718720},  # nor_conv_3x3 everywhere
    ("cell", "darts-28", None): {"params": 101938, "flops": 12865152},  # sep_conv_5x5
    ("lowrank", "vit-28", None): {"params": 205066, "flops": 11161216},  # the dense model
}


@pytest.mark.parametrize("key", list(LARGEST), ids=lambda k: "-".join(str(p) for p in k))
def test_the_reference_of_a_real_space_is_1_1_times_its_largest_arch(key):
    family, preset, overrides = key
    space = build_space(family, preset, SMALL_SPACE if overrides else None)
    reference, rules = space_reference(space, ["flops", "params"])
    largest = LARGEST[key]
    assert REFERENCE_FACTOR == 1.1
    assert reference == {
        "val_top1": 0.0,
        "flops": pytest.approx(1.1 * largest["flops"]),
        "params": pytest.approx(1.1 * largest["params"]),
    }
    assert rules["flops"] == f"1.1 x the largest arch's {largest['flops']}"
    assert space_reference(space, ["params"])[0] == {
        "val_top1": 0.0,
        "params": pytest.approx(1.1 * largest["params"]),
    }
    # a fixed point of the space: no arch of it lies beyond, so every candidate counts
    rng = random.Random(0)
    for _ in range(30):
        cost = space.cost(space.sample(rng))
        assert cost["flops"] < reference["flops"] and cost["params"] < reference["params"]


def test_the_vit_largest_arch_is_every_choice_at_its_maximum():
    space = build_space("vit", "vit-28", SMALL_SPACE)
    arch = space.largest()
    assert (arch.embed_dim, arch.depth) == (48, 3)
    assert set(arch.num_heads) == {3} and set(arch.mlp_ratio) == {3.0}


def test_the_latency_reference_follows_its_documented_rule():
    space = build_space("vit", "vit-28", SMALL_SPACE)
    big = space.arch_id(space.largest())
    rows = [row(80, 1, 1, 3.0, "other"), row(90, 2, 2, 5.0, big), row(85, 1, 1, 7.0, "slow")]
    # predicted by the fitted model: that value
    reference, rules = space_reference(space, ["latency"], rows, largest_latency=4.0)
    assert reference["latency"] == pytest.approx(4.4) and "predicted" in rules["latency"]
    # else the largest arch's archive row (measured), not the slowest row
    reference, rules = space_reference(space, ["flops", "latency"], rows)
    assert reference["latency"] == pytest.approx(5.5)
    assert rules["latency"] == "1.1 x the largest arch's, as evaluated: 5 ms"
    # without the largest arch: the archive's largest latency, flagged as run-dependent
    reference, rules = space_reference(space, ["latency"], [r for r in rows if r["arch_id"] != big])
    assert reference["latency"] == pytest.approx(7.7) and "run-dependent" in rules["latency"]
    # nothing evaluated: no value, and no volume
    reference, rules = space_reference(space, ["latency"], [])
    assert reference["latency"] is None and rules["latency"] == "nothing evaluated"
    assert hypervolume([], ["latency"], reference) == 0.0


def test_the_largest_arch_latency_from_the_search_s_fitted_model(tmp_path):
    space = build_space("vit", "vit-28", SMALL_SPACE)
    kinds = sorted({kind for kind, _ in space.latency_units(space.largest())})
    # a model of 2 ms per forward whatever the kernels: the prediction is exactly 2.0
    model = LatencyPredictor(kinds, 2.0, dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0), 10)
    (tmp_path / FOLDER).mkdir()
    saved = {"fingerprint": "f1", "target": "gpu", "model": model.to_dict()}
    (tmp_path / FOLDER / "gpu.json").write_text(json.dumps(saved))
    search = SearchConfig(objectives=["latency"], latency="predicted", latency_targets=["gpu"])
    config = SimpleNamespace(search=search)
    assert predicted_ms(config, space, space.largest(), tmp_path, "f1") == pytest.approx(2.0)
    # another search's model, or a measuring search: none
    assert predicted_ms(config, space, space.largest(), tmp_path, "f2") is None
    measured = SimpleNamespace(search=SearchConfig(objectives=["latency"]))
    assert predicted_ms(measured, space, space.largest(), tmp_path, "f1") is None


# ------------------------------------------------------------------------------- report
def test_the_report_shows_the_objectives_and_the_reference_point():
    searched = {
        "objectives": ["flops", "latency"],
        "hypervolume": 0.61234,
        "hypervolume_reference": {"val_top1": 0.0, "flops": 4635523.2, "latency": 5.5},
        "hypervolume_rule": {
            "val_top1": "fixed; ideal 100 %",
            "flops": "1.1 x the largest arch's 4214112",
            "latency": "1.1 x the largest arch's, as evaluated: 5 ms",
        },
    }
    line = hypervolume_line(searched)
    assert "hypervolume 0.6123 over (val top-1 up, flops down, latency down)" in line
    assert "normalised to [0, 1]" in line
    assert "val top-1 0 % (fixed; ideal 100 %)" in line
    assert "FLOPs 4.636 MMACs (1.1 x the largest arch's 4214112)" in line
    assert "latency 5.5 ms (1.1 x the largest arch's, as evaluated: 5 ms)" in line
    # a search result of an earlier version: its value, said to be of the older definition
    assert "older definition" in hypervolume_line({"objectives": ["flops"], "hypervolume": 9.0})


# --------------------------------------------------------------------------- search stage
def test_the_search_result_holds_the_hypervolume_and_its_reference(tmp_path):
    from orchestrator.stages.search import front_hypervolume

    spec = {"family": "vit", "preset": "vit-28", "overrides": SMALL_SPACE}
    ctx = SimpleNamespace(space_spec=spec, folder=tmp_path, fingerprint="f")
    config = SimpleNamespace(search=SearchConfig(objectives=["params", "flops"]))
    flops, params = 4214112, 74698  # the largest arch's (LARGEST above)
    # one candidate at half the largest arch's cost and 55 %: 0.55 x (1 - 0.5 / 1.1) ** 2
    rows = [row(55.0, flops / 2, params / 2, aid="half")]
    result = front_hypervolume(config, rows, ctx)
    assert result["hypervolume"] == pytest.approx(0.55 * (1 - 0.5 / 1.1) ** 2)
    assert result["hypervolume_reference"] == {
        "val_top1": 0.0,
        "params": pytest.approx(1.1 * params),
        "flops": pytest.approx(1.1 * flops),
    }
    assert set(result["hypervolume_rule"]) == {"val_top1", "params", "flops"}
    json.dumps(result)  # the stage result is JSON
