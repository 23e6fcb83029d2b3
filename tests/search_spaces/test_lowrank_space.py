"""Low-rank (FLORA) family: SVD inheritance, fused/factored export, cost, sampling, filtering."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import Counter

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import build_from_spec, build_space
from search_spaces.lowrank import LowRankArch, choice_text, is_factored, rank_of
from search_spaces.vit import ViTArch

ATOL = 1e-5
QUARTERS = (0.25, 0.5, 0.75, 1.0)
FULL = (1.0, 1.0, 1.0)
# vit-28 (64 wide, qkv 64->192, fc1 64->256): qkv factored below k=48, fc1/fc2 below 51.2,
# so 0.75 is fused on qkv (48 x 256 == 64 x 192: not strictly cheaper) but factored on fc1/fc2.
MIXED = LowRankArch(((0.25, 0.75, 1.0), (0.75, 0.25, 0.5), (1.0, 1.0, 0.25), (0.5, 1.0, 0.75)))
NAMES = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def _space(**overrides):
    return build_space("lowrank", "vit-28", overrides or None)


def _dense_state(space, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_from_spec(space.dense_spec()).state_dict()


def _expected_factored(space, arch: LowRankArch) -> dict[str, int | None]:
    """Layer name -> rank where it runs as two factors, None where it is one dense matrix."""
    c, out = space.config, {}
    for b, choice in enumerate(arch.ranks):
        ratios = dict(zip(c.layers, choice, strict=True))
        for layer, name in NAMES.items():
            i, o = c.layer_shape(b, layer)
            k = rank_of(ratios.get(layer, 1.0), i, o)
            out[f"blocks.{b}.{name}"] = k if is_factored(k, i, o) else None
    return out


def _max_diff(net, model, x, arch) -> float:
    with torch.no_grad():
        return (net(x, arch) - model(x)).abs().max().item()


def _prefix_products(second: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``[second[:, :k] @ first[:k] for k = 1..n]`` as one ``(n, out, in)`` tensor."""
    return torch.cumsum(second.T[:, :, None] * first[:, None, :], dim=0)


@pytest.fixture(scope="module")
def inherited():
    """A random dense vit-28 state, its float64 SVD per low-rank layer, and one supernet per
    ``singular_values`` option that inherited it."""
    state = _dense_state(_space())
    nets = {}
    for sv in ("split", "first", "second"):
        net = _space(singular_values=sv).build_supernet().eval()
        net.inherit(state)
        nets[sv] = net
    svds = {
        name: torch.linalg.svd(state[f"{name}.weight"].double(), full_matrices=False)
        for name in nets["split"].low_rank_layers()
    }
    return state, svds, nets


def test_svd_prefix_is_the_truncated_svd_and_full_rank_is_dense(inherited) -> None:
    state, svds, nets = inherited
    for name, (u, s, vh) in svds.items():
        want = _prefix_products(u * s, vh)  # entry k-1: the rank-k truncated SVD
        dense = state[f"{name}.weight"].double()
        for sv, net in nets.items():
            layer = net.low_rank_layers()[name]
            with torch.no_grad():  # entry k-1: second[:, :k] @ first[:k], for every rank k
                got = _prefix_products(layer.second.double(), layer.first.double())
            errors = (got - want).abs().amax(dim=(1, 2))
            assert len(errors) == layer.full_rank and errors.max() <= ATOL, (sv, name, errors)
            assert (layer.weight(layer.full_rank).double() - dense).abs().max() <= ATOL
            assert torch.equal(layer.bias, state[f"{name}.bias"])
    space = _space()
    dense_model = build_from_spec(space.dense_spec()).eval()
    dense_model.load_state_dict(state)
    x = torch.randn(4, *space.input_shape)
    for sv, net in nets.items():
        with torch.no_grad():
            diff = (net(x, space.largest()) - dense_model(x)).abs().max().item()
        assert diff <= ATOL, sv


def test_singular_values_placement(inherited) -> None:
    _, svds, nets = inherited
    for name, (_, s, _) in svds.items():
        layers = {sv: net.low_rank_layers()[name] for sv, net in nets.items()}
        a, b = layers["split"].first.double(), layers["split"].second.double()
        torch.testing.assert_close(a.norm(dim=1), s.sqrt(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.norm(dim=0), s.sqrt(), rtol=1e-5, atol=1e-6)
        eye = torch.eye(len(s), dtype=torch.float64)
        second = layers["first"].second.double()
        torch.testing.assert_close(second.T @ second, eye, rtol=0, atol=1e-5)
        first_norms = layers["first"].first.double().norm(dim=1)
        torch.testing.assert_close(first_norms, s, rtol=1e-5, atol=1e-6)
        first = layers["second"].first.double()
        torch.testing.assert_close(first @ first.T, eye, rtol=0, atol=1e-5)
        second_norms = layers["second"].second.double().norm(dim=0)
        torch.testing.assert_close(second_norms, s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["random", "inherited"])
def test_extract_mixes_factored_and_fused_layers_exactly(init: str) -> None:
    space = _space()
    expected = _expected_factored(space, MIXED)
    assert expected["blocks.0.attn.qkv"] == 16 and expected["blocks.0.mlp.fc1"] == 48
    assert expected["blocks.1.attn.qkv"] is None and expected["blocks.0.mlp.fc2"] is None
    torch.manual_seed(1)
    net = space.build_supernet()
    if init == "inherited":
        net.inherit(_dense_state(space, seed=2))
    net.eval()
    x = torch.randn(4, *space.input_shape)
    model = net.extract(MIXED)
    for name, k in expected.items():
        module = model.get_submodule(name)
        i, o = space.config.layer_shape(int(name.split(".")[1]), name.rsplit(".", 1)[1])
        if k is None:
            assert type(module) is nn.Linear and module.weight.shape == (o, i), name
        else:
            assert type(module) is nn.Sequential and len(module) == 2, name
            assert module[0].weight.shape == (k, i) and module[0].bias is None, name
            assert module[1].weight.shape == (o, k) and module[1].bias is not None, name
    assert _max_diff(net, model, x, MIXED) <= ATOL
    before = model(x).detach()
    fused_before = model.blocks[1].attn.qkv.weight.detach().clone()
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    nn.functional.cross_entropy(net(x, MIXED), torch.arange(4)).backward()
    optimizer.step()
    net.eval()
    after = net.extract(MIXED)
    assert not torch.allclose(after.blocks[1].attn.qkv.weight, fused_before)
    assert (after(x) - before).abs().max() > 1e-3  # the step changed the subnet
    assert _max_diff(net, after, x, MIXED) <= ATOL


def _flops(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as c:
        model(x)
    return c.get_total_flops() / 2  # FlopCounterMode counts a multiply-add as 2


@pytest.mark.parametrize("layers", [("qkv", "fc1", "fc2"), ("qkv", "proj", "fc1", "fc2")])
def test_cost_equals_the_exported_model(layers) -> None:
    space = _space(layers=layers)
    torch.manual_seed(0)
    net = space.build_supernet().eval()
    rng = random.Random(3)
    archs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(3)]
    if len(layers) == 3:
        archs.append(MIXED)
    else:  # proj factored at 0.25 (k=16 < 32), fused at 0.5 (32 x 128 == 64 x 64)
        archs.append(LowRankArch(((0.25, 0.25, 1.0, 0.5), (1.0, 0.5, 0.25, 1.0)) * 2))
    x = torch.zeros(1, *space.input_shape)
    for arch in archs:
        cost = space.cost(arch)
        model = net.extract(arch)
        spec_model = build_from_spec(space.export_spec(arch))
        shapes = {n: p.shape for n, p in model.named_parameters()}
        assert shapes == {n: p.shape for n, p in spec_model.named_parameters()}
        assert cost["params"] == sum(p.numel() for p in model.parameters()), arch
        assert cost["flops"] == _flops(model, x), arch
    assert space.cost(space.smallest())["flops"] < space.cost(space.largest())["flops"]


def test_deit_base_macs_match_flora() -> None:
    space = build_space("lowrank", "deit-base")
    assert space.cost(space.largest())["flops"] == pytest.approx(17.567e9, rel=1e-3)
    for r, gmacs in [(0.5, 11.99), (0.25, 7.11)]:
        arch = LowRankArch(((r, r, r),) * 12)
        assert space.cost(arch)["flops"] == pytest.approx(gmacs * 1e9, rel=5e-3), r


def _marginals(space, n: int, seed: int) -> list[list[Counter]]:
    rng = random.Random(seed)
    c = space.config
    counts = [[Counter() for _ in c.layers] for _ in range(c.depth)]
    for _ in range(n):
        for b, choice in enumerate(space.sample(rng).ranks):
            for i, r in enumerate(choice):
                counts[b][i][r] += 1
    return counts


RESTRICTED = [FULL, (0.5, 0.25, 1.0), (0.25, 0.25, 0.25), (0.75, 1.0, 0.5)]


def test_lowrank_aware_marginals_are_proportional_to_inverse_ratio() -> None:
    space = _space()
    n = 20000
    z = sum(1 / r for r in QUARTERS)
    for block in _marginals(space, n, seed=0):
        for counts in block:
            for r in QUARTERS:
                assert counts[r] / n == pytest.approx((1 / r) / z, abs=0.015), r
    restricted = _space(allowed=[RESTRICTED] * 4)
    total = sum(1 / math.prod(t) for t in RESTRICTED)
    for b in range(4):
        weights = restricted.sampling_weights(b)
        assert sum(weights.values()) == pytest.approx(1.0)
        assert weights == pytest.approx({t: (1 / math.prod(t)) / total for t in RESTRICTED})
    rng = random.Random(1)
    seen = Counter(restricted.sample(rng).ranks[2] for _ in range(n))
    for t, p in restricted.sampling_weights(2).items():
        assert seen[t] / n == pytest.approx(p, abs=0.015), t


def test_uniform_sampling_marginals_are_uniform() -> None:
    space = _space(sampling="uniform")
    n = 20000
    for block in _marginals(space, n, seed=0):
        for counts in block:
            for r in QUARTERS:
                assert counts[r] / n == pytest.approx(0.25, abs=0.015), r
    restricted = _space(sampling="uniform", allowed=[RESTRICTED] * 4)
    assert restricted.sampling_weights(0) == pytest.approx({t: 0.25 for t in RESTRICTED})


ALLOWED = [
    [FULL, (0.25, 0.5, 1.0), (0.5, 0.5, 0.5)],
    [FULL, (0.75, 0.25, 0.25)],
    [FULL, (0.25, 0.25, 0.25), (1.0, 0.5, 0.75), (0.5, 1.0, 1.0)],
    [FULL],
]


def test_allowed_sets_bound_sampling_mutation_and_crossover() -> None:
    space = _space(allowed=ALLOWED)
    rng = random.Random(0)
    samples = [space.sample(rng) for _ in range(2000)]
    mutants = [space.mutate(a, rng) for a in samples]
    pairs = zip(samples, reversed(samples), strict=True)
    children = [(a, b, space.crossover(a, b, rng)) for a, b in pairs]
    for arch in samples + mutants + [c for _, _, c in children]:
        space.validate(arch)
    for b, allowed in enumerate(ALLOWED):
        assert {a.ranks[b] for a in samples} == set(allowed), b
        assert {a.ranks[b] for a in mutants} == set(allowed), b
    for a, b, child in children:
        assert all(c in (x, y) for c, x, y in zip(child.ranks, a.ranks, b.ranks, strict=True))
    assert any(m != a for m, a in zip(mutants, samples, strict=True))
    dropped = LowRankArch((FULL, (0.5, 0.5, 0.5), FULL, FULL))
    with pytest.raises(ValueError, match=r"ranks\[1\].*filtered out"):
        space.validate(dropped)
    with pytest.raises(ValueError, match="block_1"):
        space.decode({**space.encode(space.largest()), "block_1": "0.5/0.5/0.5"})
    lacking = [*ALLOWED[:2], ALLOWED[2][1:], ALLOWED[3]]
    with pytest.raises(ValueError, match=r"allowed\[2\]"):
        _space(allowed=lacking)
    with pytest.raises(ValueError, match="allowed has 3 blocks"):
        _space(allowed=ALLOWED[:3])


def test_restrict_and_local_overrides_round_trip() -> None:
    space = _space()
    product = set(itertools.product(QUARTERS, repeat=3))
    overrides = json.loads(json.dumps(space.restrict_overrides({1: ["0.25/0.5/1", "1/1/1"]})))
    restricted = _space(**overrides)
    assert restricted.config.block_choices(1) == ((0.25, 0.5, 1.0), FULL)
    assert set(restricted.config.block_choices(0)) == product
    again = _space(**json.loads(json.dumps(restricted.restrict_overrides({}))))
    assert again.config == restricted.config
    with pytest.raises(ValueError, match="block 1"):
        restricted.restrict_overrides({1: ["0.5/0.5/0.5"]})
    assert restricted.filter_units() == 4
    local = _space(**json.loads(json.dumps(restricted.local_overrides(1))))
    for b in (0, 2, 3):
        assert local.config.block_choices(b) == (FULL,)
    assert set(local.config.block_choices(1)) == product
    assert local.config.sampling == "uniform"  # FLORA's local supernets sample uniformly
    archs = local.local_archs(1)
    assert set(archs) == {choice_text(t) for t in product}
    assert {a.ranks[1] for a in archs.values()} == product
    assert local.largest() in archs.values() and space.largest() in archs.values()
    for text, arch in archs.items():
        local.validate(arch)
        assert choice_text(arch.ranks[1]) == text
        assert arch.ranks[:1] + arch.ranks[2:] == (FULL,) * 3


TIMM = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 2,
    "num_classes": 5,
    "embed_dim": 48,
    "depth": 2,
    "num_heads": 3,
    "mlp_ratio": 2.0,
}


def test_dense_overrides_from_timm_kwargs_load_a_real_timm_vit() -> None:
    base = _space()
    overrides = base.dense_overrides({"timm": {**TIMM, "qkv_bias": True, "class_token": True}})
    space = _space(**json.loads(json.dumps(overrides)))
    assert space.config.num_heads == (3, 3) and space.config.head_dim == 16
    torch.manual_seed(0)
    timm_vit = VisionTransformer(**TIMM, class_token=True, qkv_bias=True).eval()
    dense = build_from_spec(space.dense_spec()).eval()
    dense.load_state_dict(timm_vit.state_dict(), strict=True)
    net = space.build_supernet().eval()
    net.inherit(timm_vit.state_dict())
    x = torch.randn(3, *space.input_shape)
    with torch.no_grad():
        want = timm_vit(x)
        assert (dense(x) - want).abs().max() <= 1e-6
        assert (net(x, space.largest()) - want).abs().max() <= ATOL
    with pytest.raises(ValueError, match="init_values"):
        base.dense_overrides({"timm": {**TIMM, "init_values": 1e-5}})
    with pytest.raises(ValueError, match="qkv_bias"):
        base.dense_overrides({"timm": {**TIMM, "qkv_bias": False}})


def test_dense_overrides_from_exports() -> None:
    base = _space()
    vit = build_space("vit", "vit-28")
    arch = ViTArch(embed_dim=64, depth=4, num_heads=(2, 4, 3, 2), mlp_ratio=(3.0, 2.0, 4.0, 3.0))
    spec = vit.export_spec(arch)
    space = _space(**json.loads(json.dumps(base.dense_overrides(spec))))
    assert space.config.num_heads == arch.num_heads
    assert space.config.mlp_ratio == arch.mlp_ratio
    torch.manual_seed(0)
    exported = build_from_spec(spec)
    dense = build_from_spec(space.dense_spec())
    want = {n: p.shape for n, p in exported.named_parameters()}
    assert {n: p.shape for n, p in dense.named_parameters()} == want
    space.build_supernet().inherit(exported.state_dict())  # fits strictly
    assert _space(**base.dense_overrides(base.dense_spec())).config == base.config
    with pytest.raises(ValueError, match="factored"):
        base.dense_overrides(base.export_spec(MIXED))


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ("missing", "blocks.1.mlp.fc1.weight"),
        ("unexpected", "blocks.9.mlp.fc1.weight"),
        ("shape", "blocks.2.attn.qkv.weight"),
        ("shape", "pos_embed"),
    ],
)
def test_inherit_refuses_a_mismatched_state_dict(edit: str, key: str) -> None:
    space = _space()
    state = dict(_dense_state(space))
    if edit == "missing":
        del state[key]
    elif edit == "unexpected":
        state[key] = torch.zeros(256, 64)
    else:
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    net = space.build_supernet()
    with pytest.raises(ValueError, match=re.escape(key)):
        net.inherit(state)


@pytest.mark.parametrize("preset", ["vit-28", "deit-small"])
def test_describe_parse_round_trip_and_rank_rounding(preset: str) -> None:
    space = build_space("lowrank", preset)
    rng = random.Random(0)
    for arch in [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(20))]:
        assert space.parse(space.describe(arch)) == arch
        assert space.parse(space.to_json(arch)) == arch
    if preset == "vit-28":
        text = "qkv/fc1/fc2: 0.25/0.75/1, 0.75/0.25/0.5, 1/1/0.25, 0.5/1/0.75"
        assert space.describe(MIXED) == text and space.parse(text) == MIXED
    assert rank_of(0.125, 48, 96) == 6
    assert rank_of(0.375, 768, 2304) == 288
    assert rank_of(1 / 6, 384, 1152) == 64 and rank_of(5 / 6, 1536, 384) == 320
    assert rank_of(0.3, 10, 20) == 3 and rank_of(0.01, 10, 20) == 1  # at least 1
