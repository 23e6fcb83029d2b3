"""The parts of selector (mixed) and fixed-arch training that need no Ray: the bi-level
carve-out, the two optimizers, the standalone network of a fixed arch, IT-NAS's defaults."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config import parse
from orchestrator.stages.select import mean_scores
from search_spaces import build_space
from trainables.supernets import Standalone, build_supernet
from trainables.train.config import SupernetTrainConfig
from trainables.train.loop import build_optimizer, build_selector_optimizer, selector_carve_out

TINY = {"channels": 4, "cells_per_stage": 1}


@pytest.fixture(scope="module")
def cell():
    return build_space("cell", "nb201-28", TINY)


def test_bilevel_carve_out_partitions_train_reproducibly():
    cfg = SupernetTrainConfig(sampling="mixed", selector={"mode": "bilevel", "split": 0.3})
    weights, selector = selector_carve_out(1000, cfg, seed=0)
    assert len(selector) == 300 and len(weights) == 700
    assert sorted(weights + selector) == list(range(1000))
    assert (weights, selector) == selector_carve_out(1000, cfg, seed=0)
    assert selector != selector_carve_out(1000, cfg, seed=1)[1]
    single = cfg.model_copy(update={"selector": cfg.selector.model_copy(update={"mode": "single"})})
    assert selector_carve_out(1000, single, seed=0) == (list(range(1000)), [])


def test_selector_parameters_get_their_own_optimizer(cell):
    net = cell.build_supernet()
    cfg = SupernetTrainConfig(sampling="mixed", optimizer="sgd", lr=0.025, nesterov=True)
    weights = build_optimizer(net, cfg)
    selector = build_selector_optimizer(net, cfg)
    assert isinstance(weights, torch.optim.SGD) and weights.defaults["nesterov"]
    assert isinstance(selector, torch.optim.Adam) and selector.defaults["betas"] == (0.5, 0.999)
    in_weights = {id(p) for g in weights.param_groups for p in g["params"]}
    in_selector = {id(p) for g in selector.param_groups for p in g["params"]}
    assert in_selector == {id(p) for p in net.selector_parameters()} and in_selector
    assert not in_weights & in_selector
    assert in_weights | in_selector == {id(p) for p in net.parameters()}
    assert build_selector_optimizer(net, cfg.model_copy(update={"sampling": "uniform"})) is None


def test_mixed_sampling_needs_a_selector():
    vit = build_space("vit", "vit-28").build_supernet()
    with pytest.raises(
        ValueError, match="sampling=mixed needs a supernet with an operation selector"
    ):
        build_selector_optimizer(vit, SupernetTrainConfig(sampling="mixed"))


def test_fixed_arch_is_trained_as_its_own_network(cell):
    arch = cell.largest()
    torch.manual_seed(0)
    model = build_supernet(cell, arch=arch)
    assert isinstance(model, Standalone)
    assert sum(p.numel() for p in model.parameters()) == cell.cost(arch)["params"]
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in cell.build_supernet().parameters()
    )
    x = torch.randn(2, *cell.input_shape)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, arch), model.extract(arch).eval()(x))
    with pytest.raises(ValueError, match="no adapter"):
        build_supernet(cell, {"experts": 2}, arch)


def test_select_averages_importances_weighted_by_batch(cell):
    torch.manual_seed(0)
    net = cell.build_supernet().eval()

    class Images:
        def __init__(self, n):
            self.x = torch.randn(n, *cell.input_shape)

        def __len__(self):
            return len(self.x)

        def batch(self, index):
            return self.x[index], torch.zeros(len(index), dtype=torch.long)

    data = Images(10)
    scores, seen = mean_scores(net, data, 4, None, torch.device("cpu"))  # batches of 4, 4, 2
    whole, _ = mean_scores(net, data, 10, None, torch.device("cpu"))
    assert seen == 10
    torch.testing.assert_close(scores["cell"], whole["cell"], atol=1e-5, rtol=0)
    torch.testing.assert_close(scores["cell"].sum(1), torch.ones(6))
    assert mean_scores(net, data, 4, 3, torch.device("cpu"))[1] == 3


def _itnas(**sections):
    data = {"name": "t", "method": "it-nas", "data": {"name": "fashion_mnist"}, **sections}
    return parse(data, "test")


def test_itnas_defaults_are_darts_style_and_the_config_wins():
    config = _itnas()
    sup = config.supernet
    assert (sup.sampling, sup.optimizer, sup.lr, sup.min_lr, sup.weight_decay) == (
        "mixed", "sgd", 0.025, 0.001, 3e-4,
    )  # fmt: skip
    assert sup.selector.mode == "bilevel" and sup.label_smoothing == 0.0
    assert config.stage_names == ("supernet", "select", "retrain", "export", "report")
    mine = _itnas(supernet={"lr": 0.05, "selector": {"mode": "single"}})
    assert mine.supernet.lr == 0.05 and mine.supernet.optimizer == "sgd"
    assert mine.supernet.selector.mode == "single"
    retrain = config.retrain
    assert (retrain.optimizer, retrain.lr, retrain.nesterov, retrain.weight_decay) == (
        "sgd", 0.1, True, 5e-4,
    )  # fmt: skip
    # other methods keep the generic defaults
    plain = parse({"name": "t", "method": "autoformer", "data": {"name": "fashion_mnist"}}, "t")
    assert plain.supernet.sampling == "uniform" and plain.supernet.optimizer == "adamw"


def test_retrain_refuses_subnet_sampling():
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="retrain trains one fixed arch"):
        _itnas(retrain={"sampling": "sandwich"})
