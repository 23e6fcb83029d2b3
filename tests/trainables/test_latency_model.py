"""The per-layer latency model: it recovers known per-kernel costs, refuses unknown kernels,
round-trips as JSON and reports its error; the ViT family's kernels sum to its analytic MACs."""

from __future__ import annotations

import json
import random

import pytest

from search_spaces import build_space
from tests.helpers.configs import SMALL_SPACE
from trainables.latency_model import LatencyPredictor, error_report


def test_the_predictor_recovers_known_kernel_costs_and_round_trips():
    rng = random.Random(0)
    truth = {"attn": (0.2, 3e-6), "mlp": (0.1, 2e-6)}
    units_list, ms = [], []
    for _ in range(40):
        units = [
            (k, rng.uniform(1e4, 1e5)) for k in ("attn", "mlp") for _ in range(rng.randint(1, 4))
        ]
        units_list.append(units)
        ms.append(0.5 + sum(truth[k][0] + truth[k][1] * size for k, size in units))
    model = LatencyPredictor.fit(units_list, ms, target="t4")
    predicted = [model.predict(u) for u in units_list]
    report = error_report(predicted, ms)
    assert report["mape"] < 1e-6 and report["kendall_tau"] == pytest.approx(1.0)
    again = LatencyPredictor.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.predict(units_list[0]) == pytest.approx(predicted[0])
    with pytest.raises(ValueError, match="conv3x3"):
        model.predict([("conv3x3", 1.0)])


def test_vit_kernels_sum_to_the_analytic_macs():
    space = build_space("vit", "vit-28", SMALL_SPACE)
    rng = random.Random(1)
    for _ in range(5):
        arch = space.sample(rng)
        units = space.latency_units(arch)
        macs = sum(size for kind, size in units if kind != "norm")
        assert macs == pytest.approx(space.cost(arch)["flops"], rel=0.02)
        assert {k for k, _ in units} == {"patch_embed", "norm", "attn", "mlp", "head"}
