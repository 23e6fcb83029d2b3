"""The cell supernet: mixed forward, both selectors' importances and gradients, discrete
forward and extraction on trained-looking BatchNorm statistics, and the table hook."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from search_spaces import build_space
from search_spaces.cell import CellSupernet, DartsNetwork, NB201Network

# Tiny versions of the small presets: every op, edge, cell type and reduction is there.
TINY = {
    "nb201": ("nb201-28", {"channels": 4, "cells_per_stage": 1}),
    "darts": ("darts-28", {"channels": 4, "layers": 3}),
}
CASES = [(kind, selector) for kind in TINY for selector in ("it", "darts")]


def _space(kind: str, selector: str = "it", **extra):
    preset, overrides = TINY[kind]
    return build_space("cell", preset, {**overrides, "selector": selector, **extra})


def _net(space, seed: int = 0) -> CellSupernet:
    torch.manual_seed(seed)
    return space.build_supernet()


@pytest.mark.parametrize(("kind", "selector"), CASES)
def test_mixed_forward_gives_logits(kind, selector):
    space = _space(kind, selector)
    net = _net(space).train()
    x = torch.randn(3, *space.input_shape)
    assert net(x, None).shape == (3, space.num_classes)
    assert net.forward_features(x, None).shape[0] == 3


def test_mixed_forward_at_benchmark_scale():
    space = build_space("cell", "nas-bench-201")
    net = _net(space).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), None).shape == (1, 10)


@pytest.mark.parametrize(("kind", "selector"), CASES)
def test_importances_are_distributions_over_the_ops(kind, selector):
    space = _space(kind, selector)
    net = _net(space).eval()
    x = torch.randn(4, *space.input_shape)
    scores = net.selection_scores(x)
    labels = space.selection_labels()
    assert list(scores) == list(labels)
    for name, matrix in scores.items():
        edges, ops = labels[name]
        assert matrix.shape == (len(edges), len(ops))
        assert not matrix.requires_grad
        assert torch.allclose(matrix.sum(1), torch.ones(len(edges)), atol=1e-5)
        assert (matrix >= 0).all()
    assert space.select(scores) is not None  # the rule accepts what the supernet returns
    expected = {"nb201": {"cell": (6, 5)}, "darts": {"normal": (14, 8), "reduce": (14, 8)}}[kind]
    assert {k: tuple(v.shape) for k, v in scores.items()} == expected


def test_it_importances_depend_on_the_input():
    space = _space("nb201")
    net = _net(space).eval()
    with torch.no_grad():
        for p in net.selector_parameters():  # sharpen the untrained selector
            p.mul_(20.0)
        a = net.selection_scores(torch.randn(2, *space.input_shape))
        b = net.selection_scores(3 * torch.randn(2, *space.input_shape) + 1)
    assert not torch.allclose(a["cell"], b["cell"])


@pytest.mark.parametrize(("kind", "selector"), CASES)
def test_mixed_backward_reaches_every_selector_parameter_and_weight(kind, selector):
    space = _space(kind, selector)
    net = _net(space).train()
    x = torch.randn(4, *space.input_shape)
    y = torch.randint(0, space.num_classes, (4,))
    F.cross_entropy(net(x, None), y).backward()
    names = {id(p): n for n, p in net.named_parameters()}
    selector = net.selector_parameters()
    assert selector and all(names[id(p)].startswith("selector.") for p in selector)
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    weights = [n for n, p in net.named_parameters() if id(p) not in {id(q) for q in selector}]
    assert weights and all(n.startswith("net.") for n in weights)


def test_selector_parameters_are_in_the_param_groups():
    for kind, selector in CASES:
        net = _net(_space(kind, selector))
        grouped = {id(p) for g in net.param_groups(3e-4) for p in g["params"]}
        assert {id(p) for p in net.selector_parameters()} <= grouped
        assert all(p.requires_grad for p in net.selector_parameters())


def test_it_selector_layout():
    space = _space("darts", it_layers=2, it_heads=4, it_dim=16)
    net = _net(space)
    it = net.selector["reduce"]
    assert it.tokens.shape == (2, 14, 16)  # one Indicator Token per edge of each reduction cell
    assert it.op_embed.shape == (8, 16)
    assert sorted(it.proj) == ["1", "2"]  # the stages where reduction cells occur
    assert len(it.encoder.layers) == 2
    assert net.selector["normal"].tokens.shape == (1, 14, 16)
    nb = _net(build_space("cell", "nas-bench-201"))
    assert nb.selector["cell"].tokens.shape == (15, 6, 32)
    alphas = _net(_space("darts", "darts")).selector
    assert {k: tuple(v.shape) for k, v in alphas.items()} == {"normal": (14, 8), "reduce": (14, 8)}


@pytest.mark.parametrize("kind", list(TINY))
def test_discrete_forward_trains_only_the_chosen_ops(kind):
    space = _space(kind)
    net = _net(space).train()
    arch = space.sample(random.Random(4))
    x = torch.randn(2, *space.input_shape)
    net(x, arch).sum().backward()
    touched = {n for n, p in net.named_parameters() if p.grad is not None}
    model_names = {"net." + n for n, _ in net.extract(arch).named_parameters()}
    assert touched == model_names  # no selector, no unchosen op


def _settle_batchnorm(net, space, archs, steps: int = 2) -> None:
    """Give BN layers non-trivial running statistics and affine parameters."""
    net.train()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
        for arch in [None, *archs]:
            for _ in range(steps):
                net(2 * torch.randn(4, *space.input_shape) + 0.5, arch)
    net.eval()


@pytest.mark.parametrize("kind", list(TINY))
def test_extraction_is_exact_for_many_archs(kind):
    space = _space(kind)
    net = _net(space)
    rng = random.Random(8)
    archs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(12)]
    _settle_batchnorm(net, space, archs[:3])
    x = torch.randn(3, *space.input_shape)
    for arch in archs:
        model = net.extract(arch)
        assert isinstance(model, NB201Network if kind == "nb201" else DartsNetwork)
        assert not model.training
        with torch.no_grad():
            assert (model(x) - net(x, arch)).abs().max() <= 1e-5, arch
        assert sum(p.numel() for p in model.parameters()) == space.cost(arch)["params"]


def test_all_none_nb201_cell_ignores_the_input():
    space = _space("nb201")
    net = _net(space).eval()
    out = net(torch.randn(3, *space.input_shape), space.smallest())
    assert torch.allclose(out, out[:1].expand_as(out))


@pytest.mark.parametrize("kind", list(TINY))
def test_recalibrate_works_for_a_cell_and_for_the_mixed_supernet(kind):
    space = _space(kind)
    net = _net(space).eval()
    batches = [3 * torch.randn(4, *space.input_shape) + 1 for _ in range(2)]
    arch = space.largest()
    net.recalibrate(arch, batches)
    stem_bn = net.net.stem[1]
    with torch.no_grad():
        feats = torch.cat([net.net.stem[0](x) for x in batches])
    assert torch.allclose(stem_bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    net.recalibrate(None, batches)  # the mixed supernet's statistics
    assert not net.training
    with torch.no_grad():
        assert torch.isfinite(net(batches[0], None)).all()


def test_supernet_validates_the_arch_kind():
    nb = _net(_space("nb201"))
    darts_arch = _space("darts").largest()
    with pytest.raises(ValueError, match="NB201Arch"):
        nb(torch.zeros(1, 1, 28, 28), darts_arch)


def test_tabular_benchmark():
    from search_spaces.cell.table import NB201TableError

    nb201 = build_space("cell", "nb201-28")
    try:
        table = nb201.tabular_benchmark()
    except NB201TableError as exc:  # pragma: no cover - analog-nasbench is a dependency
        pytest.skip(str(exc))
    optimum = nb201.parse(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|"
        "nor_conv_3x3~2|"
    )
    assert table.metric == "baseline_accuracy" and "nas-bench-201" in table.name
    assert table.accuracy(optimum) == pytest.approx(94.0664, abs=1e-3)  # research/nb201.md
    assert table.rank(optimum) == 1
    assert table.accuracy(nb201.smallest()) == pytest.approx(10.0)
    assert 99.9 < table.percentile(optimum) <= 100.0
    with pytest.raises(ValueError, match="NB201Arch"):
        table.accuracy(("none",) * 6)
    assert build_space("cell", "darts-28").tabular_benchmark() is None
