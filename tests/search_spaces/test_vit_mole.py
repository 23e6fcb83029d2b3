"""TAS-LoRA MoLE supernet: merge exactness, router, group-wise init, freezing, checkpoints."""

from __future__ import annotations

import io
import random

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from search_spaces import build_space
from search_spaces.vit import (
    MoleSpec,
    MoleViTSupernet,
    ViTArch,
    ViTSpace,
    build_mole_supernet,
    group_init,
    group_labels,
)
from search_spaces.vit.mole import router_features

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    """Overrides conftest's: these models are tiny (17 tokens), and on a 2-core machine shared
    with other jobs a second OpenMP thread mostly waits (the router's LSTM stalls for tens of
    milliseconds per call). Results do not depend on it."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def space() -> ViTSpace:
    """vit-28 with 7x7 patches (16 patches + class token) to keep the file fast."""
    return build_space("vit", "vit-28", overrides={"patch_size": 7})


def _mole(space: ViTSpace, seed: int = 0, random_b: bool = True, **spec: object) -> MoleViTSupernet:
    torch.manual_seed(seed)
    net = build_mole_supernet(space, spec)
    if random_b:  # B starts at zero; make it non-zero so the merge is exercised
        with torch.no_grad():
            for experts in net.experts.values():
                experts.B.normal_(std=0.05)
    return net.eval()


def _archs(space: ViTSpace, n: int, seed: int = 42) -> list[ViTArch]:
    rng = random.Random(seed)
    return [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(n)]


# ---- merge exactness ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [{}, {"router_per_layer_type": True}, {"targets": ["fc2", "qkv"], "experts": 3, "rank": 4}],
    ids=["default", "per_layer_type", "subset"],
)
def test_extract_equals_mole_forward(space: ViTSpace, spec: dict) -> None:
    net = _mole(space, **spec)
    x = torch.randn(2, *space.input_shape)
    changed = 0.0
    with torch.no_grad():
        for arch in _archs(space, 20):
            model = net.extract(arch)
            assert type(model) is VisionTransformer and not model.training
            out = net(x, arch)
            assert (out - model(x)).abs().max().item() <= ATOL, arch
            feats = net.forward_features(x, arch)
            assert (
                feats - model.forward_head(model.forward_features(x), pre_logits=True)
            ).abs().max() <= ATOL
            changed = max(changed, (out - net.base(x, arch)).abs().max().item())
    assert changed > 1e-3  # the experts did change the function


@pytest.mark.parametrize("per_layer_type", [False, True])
def test_merged_weights_follow_the_formula(space: ViTSpace, per_layer_type: bool) -> None:
    """Extracted dense weights == W[:o,:i] + (alpha/r) sum_k g_bk B_k[:o] A_k[:, :i], computed
    here expert by expert (independently of the hook), qkv reordered head-major -> timm."""
    net = _mole(space, router_per_layer_type=per_layer_type, targets=("qkv", "proj", "fc1"))
    spec, hd = net.spec, space.config.head_dim
    arch = ViTArch(embed_dim=64, depth=4, num_heads=(2, 4, 3, 2), mlp_ratio=(3.0, 2.0, 4.0, 3.0))
    model = net.extract(arch)
    g = net.mixture(arch).detach()
    e, r = arch.embed_dim, spec.rank
    base_state = net.base.extract(arch).state_dict()
    for b in range(arch.depth):
        heads = arch.num_heads[b]
        a, h = heads * hd, int(e * arch.mlp_ratio[b])
        blk = net.base.blocks[b]
        layers = {
            "qkv": (blk.attn.qkv.weight, 3 * a, e, "attn.qkv.weight"),
            "proj": (blk.attn.proj.weight, e, a, "attn.proj.weight"),
            "fc1": (blk.mlp.fc1.weight, h, e, "mlp.fc1.weight"),
            "fc2": (blk.mlp.fc2.weight, e, h, "mlp.fc2.weight"),
        }
        for t, (weight, o, i, key) in layers.items():
            got = model.state_dict()[f"blocks.{b}.{key}"]
            if t not in spec.targets:
                assert torch.equal(got, base_state[f"blocks.{b}.{key}"])
                continue
            mix = g[b, spec.targets.index(t)] if per_layer_type else g[b]
            experts = net.experts[t]
            want = weight[:o, :i].detach().clone()
            for k in range(spec.experts):
                a_k = experts.A[b, k * r : (k + 1) * r, :i]
                b_k = experts.B[b, :o, k * r : (k + 1) * r]
                want += spec.scale * mix[k] * (b_k @ a_k).detach()
            if t == "qkv":
                want = want.reshape(heads, 3, hd, e).transpose(0, 1).reshape(3 * a, e)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_zero_b_equals_plain_supernet_exactly(space: ViTSpace) -> None:
    net = _mole(space, random_b=False)
    assert all(not e.B.any() for e in net.experts.values())
    x = torch.randn(2, *space.input_shape)
    with torch.no_grad():
        for arch in _archs(space, 3):
            assert torch.equal(net(x, arch), net.base(x, arch))
            assert torch.equal(net.forward_features(x, arch), net.base.forward_features(x, arch))
            merged, plain = net.extract(arch).state_dict(), net.base.extract(arch).state_dict()
            assert all(torch.equal(merged[k], plain[k]) for k in plain)


# ---- router -----------------------------------------------------------------------------------


@pytest.mark.parametrize("per_layer_type", [False, True])
def test_router_shape_and_softmax(space: ViTSpace, per_layer_type: bool) -> None:
    net = _mole(space, router_per_layer_type=per_layer_type, experts=3, targets=("qkv", "fc1"))
    d_max = space.config.max_depth
    archs = _archs(space, 4)
    for arch in archs:
        g = net.mixture(arch)
        assert g.shape == ((d_max, 2, 3) if per_layer_type else (d_max, 3))
        assert (g >= 0).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:-1]))
    batched = net.mixtures(archs)
    assert batched.shape == (len(archs), d_max, 2 if per_layer_type else 1, 3)
    assert not torch.allclose(batched[0], batched[1])  # the router reads the arch


def test_router_features_describe_the_arch(space: ViTSpace) -> None:
    arch = ViTArch(embed_dim=64, depth=3, num_heads=(2, 4, 3), mlp_ratio=(3.0, 2.0, 4.0))
    rows = router_features(space.config, arch)
    assert len(rows) == space.config.max_depth
    assert rows[1] == [64 / 80, 4 / 4, 2.0 / 4.0, 3 / 5, 1 / 5, 1.0]
    assert rows[4] == [64 / 80, 0.0, 0.0, 3 / 5, 4 / 5, 0.0]


def test_router_active_blocks_ignore_later_blocks(space: ViTSpace) -> None:
    net = _mole(space, router_per_layer_type=True)
    arch = ViTArch(embed_dim=48, depth=3, num_heads=(2, 4, 3), mlp_ratio=(3.0, 2.0, 4.0))
    feats = net.router_input([arch])
    noisy = feats.clone()
    noisy[:, arch.depth :] = torch.rand_like(noisy[:, arch.depth :]) * 3
    with torch.no_grad():
        g, g_noisy = net.router(feats), net.router(noisy)
        assert torch.equal(g[:, : arch.depth], g_noisy[:, : arch.depth])
        assert not torch.allclose(g[:, arch.depth :], g_noisy[:, arch.depth :])
        # ... while an earlier block's features do reach later blocks
        early = feats.clone()
        early[:, 0, 1] = 0.25
        assert not torch.allclose(net.router(early)[:, 1 : arch.depth], g[:, 1 : arch.depth])


# ---- group-wise initialisation ----------------------------------------------------------------


def test_group_labels_are_balanced_parameter_quantiles(space: ViTSpace) -> None:
    rng = random.Random(3)
    archs = [space.sample(rng) for _ in range(103)]
    labels = group_labels(space, archs, 4)
    counts = [labels.count(j) for j in range(4)]
    assert sum(counts) == 103 and max(counts) - min(counts) <= 1
    params = [space.cost(a)["params"] for a in archs]
    for j in range(3):
        hi = max(p for p, lab in zip(params, labels, strict=True) if lab == j)
        lo = min(p for p, lab in zip(params, labels, strict=True) if lab == j + 1)
        assert hi <= lo
    with pytest.raises(ValueError, match="experts"):
        group_labels(space, archs, 0)


@pytest.mark.parametrize("per_layer_type", [False, True])
def test_group_init_gives_each_group_its_own_expert(space: ViTSpace, per_layer_type: bool) -> None:
    net = _mole(space, router_per_layer_type=per_layer_type, router_hidden=32)
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("router.")}
    result = group_init(net, space, steps=150, lr=1e-2, seed=0, batch=64, pool=512)
    assert result["accuracy"] > 0.7 and result["loss"] > 0
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # only the router moved
    # on fresh archs: each quantile group's mean mixture peaks at its own expert
    rng = random.Random(123)
    archs = [space.sample(rng) for _ in range(200)]
    labels = torch.tensor(group_labels(space, archs, net.spec.experts))
    with torch.no_grad():
        g = net.mixtures(archs)  # (N, D, M, K)
        active = net.router_input(archs)[..., -1][..., None, None]
        mean = (g * active).sum((1, 2)) / (active.sum((1, 2)) * g.shape[2])
    preferred = [mean[labels == j].mean(0).argmax().item() for j in range(net.spec.experts)]
    assert preferred == list(range(net.spec.experts))


# ---- training the experts only -----------------------------------------------------------------


def test_freeze_base_trains_only_experts_and_router(space: ViTSpace) -> None:
    net = _mole(space).train()
    net.freeze_base()
    base_before = {k: v.clone() for k, v in net.base.state_dict().items()}
    mole_params = list(net.mole_parameters())
    assert {id(p) for p in mole_params}.isdisjoint(id(p) for p in net.base.parameters())
    assert len(mole_params) == len(list(net.experts.parameters())) + len(
        list(net.router.parameters())
    )
    optimizer = torch.optim.AdamW(mole_params, lr=1e-2, weight_decay=0.05)
    arch = ViTArch(embed_dim=64, depth=4, num_heads=(2, 4, 3, 2), mlp_ratio=(3.0, 2.0, 4.0, 3.0))
    x, y = torch.randn(4, *space.input_shape), torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(net(x, arch), y).backward()
    assert all(p.grad is None for p in net.base.parameters())
    for name, p in [*net.experts.named_parameters(), *net.router.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    optimizer.step()
    assert all(torch.equal(v, net.base.state_dict()[k]) for k, v in base_before.items())
    net.freeze_base(False)
    assert all(p.requires_grad for p in net.base.parameters())


# ---- checkpoints -------------------------------------------------------------------------------


def _round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_weights_only(space: ViTSpace) -> None:
    net = _mole(space, seed=0, router_per_layer_type=True)
    state = _round_trip(net.state_dict())
    assert {k.split(".")[0] for k in state} == {"base", "experts", "router"}
    other = _mole(space, seed=1, random_b=False, router_per_layer_type=True)
    other.load_state_dict(state, strict=True)
    x = torch.randn(2, *space.input_shape)
    arch = space.largest()
    with torch.no_grad():
        assert torch.equal(other(x, arch), net(x, arch))


def test_plain_supernet_checkpoint_loads_into_base(space: ViTSpace) -> None:
    torch.manual_seed(7)
    plain = space.build_supernet().eval()
    net = _mole(space, seed=0, random_b=False)
    net.base.load_state_dict(_round_trip(plain.state_dict()), strict=True)
    x = torch.randn(2, *space.input_shape)
    with torch.no_grad():
        for arch in _archs(space, 2):
            assert torch.equal(net(x, arch), plain(x, arch))


# ---- spec -------------------------------------------------------------------------------------


def test_spec_from_dict_and_validation(space: ViTSpace) -> None:
    spec = MoleSpec.from_dict({"experts": 2, "targets": ["fc2", "qkv"], "alpha": 8})
    assert spec.targets == ("qkv", "fc2") and spec.alpha == 8.0 and spec.scale == 1.0
    net = build_mole_supernet(space, spec)
    assert set(net.experts) == {"qkv", "fc2"}
    assert net.experts["qkv"].A.shape == (5, 2 * 8, 80)
    assert net.experts["qkv"].B.shape == (5, 3 * 4 * 16, 2 * 8)
    assert net.experts["fc2"].A.shape == (5, 2 * 8, 320)
    for bad, match in [
        ({"experts": 0}, "experts"),
        ({"rank": 1.5}, "rank"),
        ({"alpha": -1}, "alpha"),
        ({"targets": ["qkv", "norm1"]}, "targets"),
        ({"targets": []}, "targets"),
        ({"router_per_layer_type": "yes"}, "router_per_layer_type"),
        ({"rnak": 4}, "rnak"),
    ]:
        with pytest.raises(ValueError, match=match):
            MoleSpec.from_dict(bad)
    with pytest.raises(ValueError, match="num_heads"):
        net.mixture(ViTArch(embed_dim=64, depth=3, num_heads=(2, 5, 3), mlp_ratio=(2.0,) * 3))
