"""ViT supernet: extraction exactness, weight entanglement, gradients, drop path, timm output."""

from __future__ import annotations

import random

import pytest
import torch
from timm.layers import Attention, DropPath
from timm.models.vision_transformer import Block, VisionTransformer
from torch.nn.attention import SDPBackend, sdpa_kernel

from search_spaces import build_space
from search_spaces.vit import ViTArch, ViTSpace, ViTSupernet
from tests.search_spaces.flops import count_macs

ATOL = 1e-5


def _max_diff(net: ViTSupernet, model: torch.nn.Module, x: torch.Tensor, arch: ViTArch) -> float:
    with torch.no_grad():
        return (net(x, arch) - model(x)).abs().max().item()


@pytest.mark.parametrize(("preset", "n_random"), [("vit-28", 20), ("vit-32", 5)])
def test_extraction_exact_for_random_smallest_and_largest(preset: str, n_random: int) -> None:
    space = build_space("vit", preset)
    torch.manual_seed(0)
    net = space.build_supernet().eval()
    rng = random.Random(42)
    archs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(n_random)]
    x = torch.randn(4, *space.input_shape)
    for arch in archs:
        model = net.extract(arch)
        assert not model.training
        assert _max_diff(net, model, x, arch) <= ATOL, arch


def test_extraction_exact_on_autoformer_tiny_at_224() -> None:
    space = build_space("vit", "autoformer-tiny")
    torch.manual_seed(0)
    net = space.build_supernet().eval()
    arch = ViTArch(
        embed_dim=216,
        depth=13,
        num_heads=(3, 4, 4, 3, 4, 3, 3, 4, 4, 3, 4, 3, 4),
        mlp_ratio=(3.5, 4.0, 3.5, 3.5, 4.0, 4.0, 3.5, 4.0, 3.5, 3.5, 4.0, 3.5, 4.0),
    )
    x = torch.randn(1, 3, 224, 224)
    assert _max_diff(net, net.extract(arch), x, arch) <= ATOL


def test_extracted_model_is_stock_timm(vit28: ViTSpace, vit28_supernet: ViTSupernet) -> None:
    arch = ViTArch(embed_dim=64, depth=4, num_heads=(2, 4, 3, 2), mlp_ratio=(3.0, 2.0, 4.0, 3.0))
    model = vit28_supernet.extract(arch)
    assert type(model) is VisionTransformer
    assert model.global_pool == "token" and model.cls_token is not None
    assert len(model.blocks) == arch.depth
    for block, heads, ratio in zip(model.blocks, arch.num_heads, arch.mlp_ratio, strict=True):
        assert type(block) is Block and type(block.attn) is Attention
        assert block.attn.num_heads == heads
        assert block.attn.head_dim == vit28.config.head_dim
        assert block.attn.qkv.out_features == 3 * heads * vit28.config.head_dim
        assert block.mlp.fc1.out_features == int(arch.embed_dim * ratio)
    for module in model.modules():
        assert type(module).__module__.startswith(("timm.", "torch.nn.")), type(module)


def test_cost_equals_the_extracted_model(vit28: ViTSpace, vit28_supernet: ViTSupernet) -> None:
    """Against the real extracted model on CPU (the contract checks the meta-device build)."""
    rng = random.Random(5)
    for arch in [vit28.smallest(), vit28.largest()] + [vit28.sample(rng) for _ in range(5)]:
        model = vit28_supernet.extract(arch).eval()
        cost = vit28.cost(arch)
        assert cost["params"] == sum(p.numel() for p in model.parameters())
        # cost() reports MACs; count_macs adds attention matmuls a fused kernel hid from torch.
        counted = count_macs(model, torch.zeros(1, *vit28.input_shape))
        assert cost["flops"] == counted, arch


def test_mac_count_does_not_depend_on_the_attention_kernel(
    vit28: ViTSpace, vit28_supernet: ViTSupernet
) -> None:
    """The math backend's bmm calls, which FlopCounterMode always sees, give the same count
    as whatever kernel runs by default (on some torch builds one it cannot see)."""
    model = vit28_supernet.extract(MIXED).eval()
    x = torch.zeros(1, *vit28.input_shape)
    with sdpa_kernel(SDPBackend.MATH):
        math_macs = count_macs(model, x)
    assert count_macs(model, x) == math_macs == vit28.cost(MIXED)["flops"]


def test_weight_entanglement_uses_leading_slices(vit28_supernet: ViTSupernet) -> None:
    """A narrower subnet's timm weights are the leading slices of a wider one's, with q, k and
    v EACH keeping their first heads (timm's qkv rows are [q | k | v])."""
    hd = vit28_supernet.config.head_dim
    wide = ViTArch(embed_dim=80, depth=5, num_heads=(4,) * 5, mlp_ratio=(4.0,) * 5)
    narrow = ViTArch(embed_dim=48, depth=3, num_heads=(2, 3, 4), mlp_ratio=(2.0, 3.0, 4.0))
    w, n = vit28_supernet.extract(wide), vit28_supernet.extract(narrow)
    e = narrow.embed_dim
    assert torch.equal(n.patch_embed.proj.weight, w.patch_embed.proj.weight[:e])
    assert torch.equal(n.pos_embed, w.pos_embed[..., :e])
    assert torch.equal(n.cls_token, w.cls_token[..., :e])
    assert torch.equal(n.head.weight, w.head.weight[:, :e])
    assert torch.equal(n.norm.weight, w.norm.weight[:e])
    for i, heads in enumerate(narrow.num_heads):
        a = heads * hd
        wq = w.blocks[i].attn.qkv.weight.view(3, 4 * hd, 80)
        nq = n.blocks[i].attn.qkv.weight.view(3, a, e)
        assert torch.equal(nq, wq[:, :a, :e])
        wb = w.blocks[i].attn.qkv.bias.view(3, 4 * hd)
        assert torch.equal(n.blocks[i].attn.qkv.bias.view(3, a), wb[:, :a])
        assert torch.equal(n.blocks[i].attn.proj.weight, w.blocks[i].attn.proj.weight[:e, :a])
        h = int(e * narrow.mlp_ratio[i])
        assert torch.equal(n.blocks[i].mlp.fc1.weight, w.blocks[i].mlp.fc1.weight[:h, :e])
        assert torch.equal(n.blocks[i].mlp.fc2.weight, w.blocks[i].mlp.fc2.weight[:e, :h])


def _active_masks(net: ViTSupernet, arch: ViTArch) -> dict[str, torch.Tensor]:
    """Which entries of every supernet parameter ``arch`` uses, written from DESIGN.md 4.1
    independently of the implementation's slicing code."""
    cfg, e, d = net.config, arch.embed_dim, arch.depth
    masks = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in net.named_parameters()}
    masks["patch_embed.proj.weight"][:e] = True
    masks["patch_embed.proj.bias"][:e] = True
    masks["cls_token"][..., :e] = True
    masks["pos_embed"][..., :e] = True
    masks["norm.weight"][:e] = True
    masks["norm.bias"][:e] = True
    masks["head.weight"][:, :e] = True
    masks["head.bias"][:] = True
    for i in range(d):
        a = arch.num_heads[i] * cfg.head_dim
        h = int(e * arch.mlp_ratio[i])
        p = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            masks[p + norm + ".weight"][:e] = True
            masks[p + norm + ".bias"][:e] = True
        masks[p + "attn.qkv.weight"][: 3 * a, :e] = True  # head-major q/k/v rows
        masks[p + "attn.qkv.bias"][: 3 * a] = True
        masks[p + "attn.proj.weight"][:e, :a] = True
        masks[p + "attn.proj.bias"][:e] = True
        masks[p + "mlp.fc1.weight"][:h, :e] = True
        masks[p + "mlp.fc1.bias"][:h] = True
        masks[p + "mlp.fc2.weight"][:e, :h] = True
        masks[p + "mlp.fc2.bias"][:e] = True
    return masks


MIXED = ViTArch(embed_dim=64, depth=4, num_heads=(2, 4, 3, 2), mlp_ratio=(3.0, 2.0, 4.0, 3.0))


def test_gradients_touch_only_the_active_slices(vit28: ViTSpace) -> None:
    torch.manual_seed(0)
    net = vit28.build_supernet().train()
    x = torch.randn(8, *vit28.input_shape)
    loss = torch.nn.functional.cross_entropy(net(x, MIXED), torch.arange(8) % 10)
    loss.backward()
    masks = _active_masks(net, MIXED)
    for name, param in net.named_parameters():
        active = masks[name]
        if param.grad is None:
            assert not active.any(), f"{name} is used by the arch but got no gradient"
            continue
        assert torch.all(param.grad[~active] == 0), f"{name}: gradient outside the active slice"
        used = param.grad != 0
        assert used[active].float().mean() > 0.99, f"{name}: active slice got no gradient"
    unused_blocks = [n for n, p in net.named_parameters() if n.startswith("blocks.4.")]
    assert unused_blocks and all(net.get_parameter(n).grad is None for n in unused_blocks)


def test_sgd_step_leaves_inactive_slices_untouched(vit28: ViTSpace) -> None:
    torch.manual_seed(0)
    net = vit28.build_supernet().train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, *vit28.input_shape)
    torch.nn.functional.cross_entropy(net(x, MIXED), torch.arange(8) % 10).backward()
    optimizer.step()
    masks = _active_masks(net, MIXED)
    for name, param in net.named_parameters():
        assert torch.equal(param[~masks[name]], before[name][~masks[name]]), name
    assert not torch.equal(net.blocks[1].attn.qkv.weight, before["blocks.1.attn.qkv.weight"])


def test_drop_path_only_in_train_mode_and_matches_extracted_model() -> None:
    space = build_space("vit", "vit-28", overrides={"drop_path": 0.5})
    torch.manual_seed(0)
    net = space.build_supernet()
    arch = space.largest()
    x = torch.randn(6, *space.input_shape)
    model = net.train().extract(arch)
    assert model.training
    # Same rates per block as the supernet (timm's linear rule, scaled by width).
    rate = net.drop_path_rate(arch)
    assert rate == pytest.approx(0.5 * 80 / 80)
    rates = [
        b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for b in model.blocks
    ]
    assert rates == pytest.approx([rate * i / (arch.depth - 1) for i in range(arch.depth)])
    with torch.no_grad():
        torch.manual_seed(1)
        a = net(x, arch)
        torch.manual_seed(1)
        b = model(x)
        torch.manual_seed(2)
        c = net(x, arch)
    assert (a - b).abs().max() <= ATOL  # same random draws in the same order
    assert not torch.allclose(a, c)  # stochastic in train mode
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, arch), net(x, arch))


def test_drop_path_scales_with_embed_dim() -> None:
    space = build_space("vit", "vit-28", overrides={"drop_path": 0.2})
    net = space.build_supernet()
    narrow = ViTArch(48, 3, (2, 2, 2), (2.0, 2.0, 2.0))
    assert net.drop_path_rate(narrow) == pytest.approx(0.2 * 48 / 80)
    flat = build_space(
        "vit", "vit-28", overrides={"drop_path": 0.2, "drop_path_scales_with_embed": False}
    ).build_supernet()
    assert flat.drop_path_rate(narrow) == pytest.approx(0.2)


def test_overridden_geometry_still_extracts_exactly() -> None:
    space = build_space(
        "vit",
        "vit-28",
        overrides={
            "img_size": 32,
            "patch_size": 8,
            "in_chans": 3,
            "num_classes": 5,
            "head_dim": 8,
            "embed_dims": [40, 24],
            "depths": [1, 2],
            "num_heads": [1, 5],
            "mlp_ratios": [1.5, 3],
        },
    )
    assert space.input_shape == (3, 32, 32)
    torch.manual_seed(0)
    net = space.build_supernet().eval()
    x = torch.randn(3, 3, 32, 32)
    rng = random.Random(0)
    for arch in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(5)]:
        model = net.extract(arch)
        assert model(x).shape == (3, 5)
        assert _max_diff(net, model, x, arch) <= ATOL


def test_supernet_parameter_names_follow_timm(vit28_supernet: ViTSupernet) -> None:
    names = dict(vit28_supernet.named_parameters())
    cfg = vit28_supernet.config
    assert names["patch_embed.proj.weight"].shape == (80, 1, 4, 4)
    assert names["pos_embed"].shape == (1, 50, 80)
    assert names["blocks.4.attn.qkv.weight"].shape == (3 * 4 * cfg.head_dim, 80)
    assert names["blocks.4.mlp.fc1.weight"].shape == (320, 80)
    assert names["head.weight"].shape == (10, 80)
    assert "blocks.5.norm1.weight" not in names


def test_autoformer_supernet_width_exceeds_largest_subnet() -> None:
    """AutoFormer-T's supernet is 256 wide although subnets stop at 240 (DESIGN.md 4.1)."""
    space = build_space("vit", "autoformer-tiny", overrides={"img_size": 32})
    with torch.device("meta"):
        net = space.build_supernet()
    assert net.cls_token.shape[-1] == 256
    assert net.blocks[0].mlp.fc1.weight.shape == (1024, 256)
    assert len(net.blocks) == 14 and net.blocks[0].attn.qkv.weight.shape[0] == 3 * 4 * 64


def test_supernet_gradients_equal_the_extracted_models(vit28: ViTSpace) -> None:
    """Training a subnet inside the supernet is training the standalone model: every gradient
    of the extracted timm model equals the matching slice of the supernet's gradient."""
    torch.manual_seed(0)
    net = vit28.build_supernet().double().eval()  # eval: no drop-path randomness
    hd = vit28.config.head_dim
    model = net.extract(MIXED)
    x = torch.randn(4, *vit28.input_shape, dtype=torch.float64)
    y = torch.arange(4)
    torch.nn.functional.cross_entropy(net(x, MIXED), y).backward()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    sup = {n: p.grad for n, p in net.named_parameters()}
    e = MIXED.embed_dim
    expected = {
        "patch_embed.proj.weight": sup["patch_embed.proj.weight"][:e],
        "cls_token": sup["cls_token"][..., :e],
        "pos_embed": sup["pos_embed"][..., :e],
        "norm.weight": sup["norm.weight"][:e],
        "head.weight": sup["head.weight"][:, :e],
        "head.bias": sup["head.bias"],
    }
    for i, heads in enumerate(MIXED.num_heads):
        a, h, p = heads * hd, int(e * MIXED.mlp_ratio[i]), f"blocks.{i}."
        qkv = sup[p + "attn.qkv.weight"][: 3 * a, :e].reshape(heads, 3, hd, e).transpose(0, 1)
        expected[p + "attn.qkv.weight"] = qkv.reshape(3 * a, e)
        expected[p + "attn.proj.weight"] = sup[p + "attn.proj.weight"][:e, :a]
        expected[p + "mlp.fc1.weight"] = sup[p + "mlp.fc1.weight"][:h, :e]
        expected[p + "mlp.fc1.bias"] = sup[p + "mlp.fc1.bias"][:h]
        expected[p + "mlp.fc2.weight"] = sup[p + "mlp.fc2.weight"][:e, :h]
        expected[p + "norm2.bias"] = sup[p + "norm2.bias"][:e]
    grads = {n: q.grad for n, q in model.named_parameters()}
    for name, want in expected.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-9, atol=1e-12, msg=name)


def test_forward_features_are_timms_pre_logits():
    space = build_space("vit", "vit-28", {})
    supernet = space.build_supernet().eval()
    arch = space.sample(random.Random(3))
    x = torch.randn(4, *space.input_shape)
    model = supernet.extract(arch).eval()
    with torch.no_grad():
        features = supernet.forward_features(x, arch)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert features.shape == (4, arch.embed_dim)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
