"""The search's evaluator in-process: scores, cost, latency, the per-process cache, and that it
reads only the val split."""

from __future__ import annotations

import json

import pytest
import torch

from search_spaces import Supernet, build_space
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


class _BNSupernet(torch.nn.Module):
    """Stands in for a cell-space supernet: BatchNorm, and the val images it scores."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, num_classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, arch):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    def has_batchnorm(self):
        return True

    def recalibrate(self, arch, batches):
        self.seen = list(batches)
        Supernet.recalibrate(self, arch, batches)


def test_batchnorm_supernets_are_recalibrated_on_a_fixed_train_slice(
    checkpoint, tmp_path, monkeypatch
):
    import trainables.evaluator as evaluator_module

    log = tmp_path / "splits.jsonl"
    monkeypatch.setenv(ACCESS_LOG_ENV, str(log))
    monkeypatch.setattr(
        evaluator_module, "load_supernet", lambda space, ckpt, adapter: _BNSupernet(10)
    )
    spec = EvalSpec(checkpoint=checkpoint, data=DATA, space=SPACE, batch_size=50,
                    recalibration_batches=2)  # fmt: skip
    evaluator = Evaluator(spec, device=torch.device("cpu"))
    assert [len(x) for x in evaluator.recalibration] == [50, 50]
    train = load_splits(DATA, ("train",), purpose="check").train
    expected, _ = train.batch(list(range(100)))
    assert torch.equal(torch.cat(evaluator.recalibration), expected)  # the first train images
    for arch in (evaluator.space.smallest(), evaluator.space.largest()):
        evaluator.score(arch)
        assert len(evaluator.supernet.seen) == 2  # before every score, on the same slice
        with torch.no_grad():
            feats = evaluator.supernet.conv(expected)
        assert torch.allclose(evaluator.supernet.bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    splits = {json.loads(line)["split"] for line in log.read_text().splitlines()}
    assert "test" not in splits and {"train", "val"} <= splits
