"""The search's evaluator in-process: scores, cost, latency, the per-process cache, and that it
reads only the val split."""

from __future__ import annotations

import json

import pytest
import torch

from search_spaces import build_space
from tests.helpers.configs import SMALL_SPACE
from trainables.data import DataConfig, load_splits
from trainables.data.splits import ACCESS_LOG_ENV
from trainables.evaluator import EvalSpec, Evaluator, cached_evaluator
from trainables.train import checkpoint as ckpt

DATA = DataConfig(name="fashion_mnist", download=False, subset={"train": 256, "val": 256})
SPACE = {"family": "vit", "preset": "vit-28", "overrides": SMALL_SPACE}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    space = build_space("vit", "vit-28", SMALL_SPACE)
    folder = tmp_path_factory.mktemp("ckpt")
    ckpt.save(folder, space.build_supernet().state_dict(), {}, {})
    return str(folder)


def test_measure_scores_the_supernet_on_val_with_cost_and_latency(
    checkpoint, tmp_path, monkeypatch
):
    log = tmp_path / "splits.jsonl"
    monkeypatch.setenv(ACCESS_LOG_ENV, str(log))
    spec = EvalSpec(checkpoint=checkpoint, data=DATA, space=SPACE, batch_size=100,
                    latency_batch_size=2, latency_repeats=3)  # fmt: skip
    evaluator = Evaluator(spec, device=torch.device("cpu"))
    arch = evaluator.space.largest()
    result = evaluator.measure(arch)
    # the same number computed by hand from the supernet's logits on the val split
    val = load_splits(DATA, ("val",), purpose="check").val
    x, y = val.batch(list(range(len(val))))
    with torch.no_grad():
        expected = (evaluator.supernet(x, arch).argmax(1) == y).float().mean().item() * 100
    assert result["val_top1"] == pytest.approx(expected, abs=1e-6)
    assert result["params"] == evaluator.space.cost(arch)["params"]
    assert result["flops"] == evaluator.space.cost(arch)["flops"]
    assert result["latency_ms"] > 0 and result["end_time"] >= result["start_time"]
    purposes = [json.loads(line) for line in log.read_text().splitlines()]
    assert {(e["split"], e["purpose"]) for e in purposes} == {("val", "search"), ("val", "check")}


def test_latency_is_only_measured_when_asked(checkpoint):
    evaluator = Evaluator(EvalSpec(checkpoint=checkpoint, data=DATA, space=SPACE))
    assert "latency_ms" not in evaluator.measure(evaluator.space.smallest())


def test_one_cached_evaluator_per_process_and_spec(checkpoint):
    spec = EvalSpec(checkpoint=checkpoint, data=DATA, space=SPACE)
    first = cached_evaluator(spec)
    assert cached_evaluator(EvalSpec(checkpoint=checkpoint, data=DATA, space=SPACE)) is first
    other = cached_evaluator(EvalSpec(checkpoint=checkpoint, data=DATA, space=SPACE, batch_size=7))
    assert other is not first
