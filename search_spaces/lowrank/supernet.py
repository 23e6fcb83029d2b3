"""FLORA's low-rank supernet over a dense ViT: nested SVD factors per low-rank layer.

Each low-rank layer holds one full-rank factor pair, ``first`` (n x in) and ``second``
(out x n) with n = min(in, out), and the dense layer's bias. Rank k uses the PREFIXES
``first[:k]`` and ``second[:, :k]``: every subnet shares (and trains) the leading singular
directions, and the tail is trained only by high-rank samples (FLORA's gradient sharing).

:meth:`LowRankViTSupernet.inherit` decomposes a dense timm ViT: ``W = U S V^T`` (float64 SVD),
``first = S^a V^T``, ``second = U S^(1-a)`` with ``a`` set by ``singular_values`` (``split``:
1/2, ``first``: 1, ``second``: 0). Whatever the split, ``second[:, :k] @ first[:k]`` is the
rank-k truncated SVD (the best rank-k approximation) and full rank is the dense layer.

Forward and ``extract`` follow ``rank.py``: a layer runs as two factors where that is cheaper,
else as the fused matrix ``second[:, :k] @ first[:k]`` (computed per forward, so it never goes
stale after an optimizer step). Module names follow timm's ``VisionTransformer``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.base import Supernet
from search_spaces.layers import trunc_normal_
from search_spaces.lowrank.arch import LowRankArch, validate_lowrank_arch
from search_spaces.lowrank.config import LowRankSpaceConfig
from search_spaces.lowrank.cost import layer_ranks
from search_spaces.lowrank.rank import is_factored
from search_spaces.lowrank.timm_model import build_lowrank_vit

_LN_EPS = 1e-6  # timm's ViT LayerNorm eps
_SIGMA_POWER = {"split": 0.5, "first": 1.0, "second": 0.0}


class LowRankLinear(nn.Module):
    """A linear layer whose rank-k restriction is the prefix of nested factors."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        n = min(in_features, out_features)
        self.first = nn.Parameter(torch.empty(n, in_features))
        self.second = nn.Parameter(torch.empty(out_features, n))
        self.bias = nn.Parameter(torch.zeros(out_features))
        # the product of two N(0, s^2) factors has std sqrt(n) s^2: make it timm's 0.02
        std = math.sqrt(0.02 / math.sqrt(n))
        trunc_normal_(self.first, std=std)
        trunc_normal_(self.second, std=std)

    @property
    def full_rank(self) -> int:
        return self.first.shape[0]

    @torch.no_grad()
    def set_dense(self, weight: torch.Tensor, bias: torch.Tensor, singular_values: str) -> None:
        """Factor the dense ``weight`` (out x in) by SVD; the prefix-k product is then its
        rank-k truncated SVD."""
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        a = _SIGMA_POWER[singular_values]
        self.first.copy_(s.pow(a)[:, None] * vh)
        self.second.copy_(u * s.pow(1.0 - a)[None, :])
        self.bias.copy_(bias)

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rank == self.full_rank:
            return self.first, self.second
        return self.first[:rank], self.second[:, :rank]

    def weight(self, rank: int) -> torch.Tensor:
        """The fused dense matrix of rank ``rank``."""
        first, second = self.factors(rank)
        return second @ first

    def forward(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        if is_factored(rank, self.in_features, self.out_features):
            first, second = self.factors(rank)
            return F.linear(F.linear(x, first), second, self.bias)
        return F.linear(x, self.weight(rank), self.bias)


def _apply(layer: nn.Module, x: torch.Tensor, rank: int) -> torch.Tensor:
    return layer(x, rank) if isinstance(layer, LowRankLinear) else layer(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, low: set[str]) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        width = heads * head_dim
        self.qkv = LowRankLinear(dim, 3 * width) if "qkv" in low else nn.Linear(dim, 3 * width)
        self.proj = LowRankLinear(width, dim) if "proj" in low else nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, ranks: Mapping[str, int]) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = _apply(self.qkv, x, ranks["qkv"]).reshape(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return _apply(self.proj, x, ranks["proj"])


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, low: set[str]) -> None:
        super().__init__()
        self.fc1 = LowRankLinear(dim, hidden) if "fc1" in low else nn.Linear(dim, hidden)
        self.fc2 = LowRankLinear(hidden, dim) if "fc2" in low else nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, ranks: Mapping[str, int]) -> torch.Tensor:
        return _apply(self.fc2, F.gelu(_apply(self.fc1, x, ranks["fc1"])), ranks["fc2"])


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int, low: set[str]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = _Attention(dim, heads, head_dim, low)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = _Mlp(dim, hidden, low)

    def forward(self, x: torch.Tensor, ranks: Mapping[str, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), ranks)
        return x + self.mlp(self.norm2(x), ranks)


class LowRankViTSupernet(Supernet):
    """Every :class:`LowRankArch` of a :class:`LowRankSpaceConfig` over one dense ViT.

    ``forward(x, arch)`` returns logits; ``extract(arch)`` a timm ``VisionTransformer`` with
    each layer fused or factored by ``rank.py``'s rule, equal in output within float32 rounding.
    """

    def __init__(self, config: LowRankSpaceConfig) -> None:
        super().__init__()
        self.config = config
        e, low = config.embed_dim, set(config.layers)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(
            config.in_chans, e, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, e))
        self.blocks = nn.ModuleList(
            _Block(e, config.num_heads[b], config.head_dim, config.hidden_dim(b), low)
            for b in range(config.depth)
        )
        self.norm = nn.LayerNorm(e, eps=_LN_EPS)
        self.head = nn.Linear(e, config.num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def low_rank_layers(self) -> dict[str, LowRankLinear]:
        """Low-rank layers by their timm name (``blocks.3.attn.qkv``), bound by name."""
        return {n: m for n, m in self.named_modules() if isinstance(m, LowRankLinear)}

    # ---- weights of the dense model ------------------------------------------------------------
    @torch.no_grad()
    def inherit(self, state: Mapping[str, torch.Tensor]) -> None:
        """Start from a dense timm ViT's state dict (``build_lowrank_vit`` without factored
        layers): low-rank layers by SVD, everything else copied. Every key must match: a
        missing or unexpected key, or a wrong shape, raises ``ValueError`` naming it."""
        low = self.low_rank_layers()
        expected = {}
        for name, tensor in self.state_dict().items():
            layer, _, leaf = name.rpartition(".")
            if layer in low:
                if leaf == "first":
                    expected[f"{layer}.weight"] = (low[layer].out_features, low[layer].in_features)
                elif leaf == "bias":
                    expected[name] = tuple(tensor.shape)
            else:
                expected[name] = tuple(tensor.shape)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"the dense model does not fit the low-rank space: missing keys {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''}, unexpected keys {unexpected[:4]}"
                f"{' ...' if len(unexpected) > 4 else ''}; allowed: the state dict of the "
                "timm ViT the space describes"
            )
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise ValueError(
                    f"the dense model's {name} has shape {list(state[name].shape)}; allowed: "
                    f"{list(shape)} (the shape the low-rank space describes)"
                )
        own = self.state_dict()
        for name in expected:
            layer = name.rpartition(".")[0]
            if layer in low:
                if name.endswith(".weight"):
                    low[layer].set_dense(
                        state[name], state[f"{layer}.bias"], self.config.singular_values
                    )
            else:
                own[name].copy_(state[name])

    # ---- forward and extraction ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: LowRankArch) -> torch.Tensor:
        return self.head(self.forward_features(x, arch))

    def forward_features(self, x: torch.Tensor, arch: LowRankArch) -> torch.Tensor:
        """The final-normed class token ``(B, embed_dim)`` (timm's pre-logits)."""
        validate_lowrank_arch(arch, self.config)
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for b, block in enumerate(self.blocks):
            x = block(x, layer_ranks(self.config, arch, b))
        return self.norm(x[:, 0])

    def export_kwargs(self, arch: LowRankArch) -> dict[str, object]:
        return lowrank_timm_kwargs(self.config, arch)

    @torch.no_grad()
    def extract(self, arch: LowRankArch) -> nn.Module:
        validate_lowrank_arch(arch, self.config)
        ref = self.head.weight
        model = build_lowrank_vit(
            **lowrank_timm_kwargs(self.config, arch),
            init_weights=False,
            device="meta",
            dtype=ref.dtype,
        ).to_empty(device=ref.device)
        state = {}
        low = self.low_rank_layers()
        for name, tensor in self.state_dict().items():
            layer, _, leaf = name.rpartition(".")
            if layer not in low:
                state[name] = tensor
        for layer, module in low.items():
            b, kind = _block_and_kind(layer)
            rank = layer_ranks(self.config, arch, b)[kind]
            if is_factored(rank, module.in_features, module.out_features):
                first, second = module.factors(rank)
                state[f"{layer}.0.weight"] = first
                state[f"{layer}.1.weight"] = second
                state[f"{layer}.1.bias"] = module.bias
            else:
                state[f"{layer}.weight"] = module.weight(rank)
                state[f"{layer}.bias"] = module.bias
        model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
        return model.train(self.training)


def _block_and_kind(name: str) -> tuple[int, str]:
    """``blocks.3.attn.qkv`` -> (3, "qkv")."""
    parts = name.split(".")
    return int(parts[1]), parts[-1]


def lowrank_timm_kwargs(config: LowRankSpaceConfig, arch: LowRankArch) -> dict[str, object]:
    """JSON-serialisable kwargs of :func:`build_lowrank_vit` for ``arch``."""
    factored = {}
    for b in range(config.depth):
        for layer, rank in layer_ranks(config, arch, b).items():
            i, o = config.layer_shape(b, layer)
            if is_factored(rank, i, o):
                where = "attn" if layer in ("qkv", "proj") else "mlp"
                factored[f"blocks.{b}.{where}.{layer}"] = rank
    return {**dense_timm_kwargs(config), "factored": factored}


def dense_timm_kwargs(config: LowRankSpaceConfig) -> dict[str, object]:
    """Kwargs of the dense ViT (``build_lowrank_vit`` / the ViT family's ``build_timm_vit``)."""
    return {
        "img_size": config.img_size,
        "patch_size": config.patch_size,
        "in_chans": config.in_chans,
        "num_classes": config.num_classes,
        "embed_dim": config.embed_dim,
        "num_heads": list(config.num_heads),
        "mlp_ratio": list(config.mlp_ratio),
        "head_dim": config.head_dim,
    }
