"""AutoFormer's weight-entangled ViT supernet (DESIGN.md section 4.1).

Every subnet uses the LEADING slice of each shared tensor: the patch conv ``W[:E]``, class and
position embeddings ``[..., :E]``, LayerNorms ``[:E]``, ``fc1 W[:h, :E]``, ``fc2 W[:E, :h]``,
``proj W[:E, :A]``, ``head W[:, :E]``, where ``E`` is the subnet's embed width, ``h`` its block's
MLP width and ``A = heads * head_dim`` its block's q/k/v width.

q, k and v each take their first ``A`` rows (their first ``heads`` heads). The fused qkv weight
is stored HEAD-MAJOR: rows ``[q_0 k_0 v_0 | q_1 k_1 v_1 | ...]`` where ``q_j`` are the ``head_dim``
rows of head ``j``. "The first ``heads`` heads of q, k and v" is then the leading row slice
``W[:3A]``: one GEMM on a zero-copy view, instead of three GEMMs or a gather. ``extract``
reorders those rows into timm's ``[q | k | v]`` layout.

All slices are views of the parameters (``F.linear`` and ``F.conv2d`` take strided weights), so
a forward copies no weights; a tensor used in full is passed as is, without a slice node.
Autograd writes gradient only into the active slices: inactive rows and columns, and blocks
beyond the depth, receive exactly zero (or no) gradient. (A custom autograd function that wrote
weight gradients straight into full-size buffers was tried and measured no faster on CPU.)

Module and parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``blocks.3.attn.qkv``, ``blocks.3.mlp.fc1``, ``norm``, ``head``) so checkpoints read familiarly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.base import Supernet
from search_spaces.layers import drop_path, drop_path_rates, trunc_normal_
from search_spaces.vit.arch import ViTArch, validate_vit_arch
from search_spaces.vit.config import ViTSpaceConfig, mlp_hidden_dim
from search_spaces.vit.timm_model import build_timm_vit

_LN_EPS = 1e-6  # timm's ViT LayerNorm eps

WeightHook = Callable[[int, str, torch.Tensor], torch.Tensor]
"""``hook(block, name, weight) -> weight``: replaces the weight slice that block ``block``'s
linear ``name`` (``"qkv"``, ``"proj"``, ``"fc1"``, ``"fc2"``) uses, in the supernet's layout
(qkv rows head-major). TAS-LoRA (``mole.py``) adds its merged expert deltas this way."""

_BlockHook = Callable[[str, torch.Tensor], torch.Tensor]


def _lead(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """Leading ``[:n]`` view; the parameter itself when nothing is cut away, which spares
    autograd a slice node (a zero-filled full-size gradient buffer plus a copy) per step."""
    return tensor if n == tensor.shape[0] else tensor[:n]


def _linear(
    x: torch.Tensor,
    layer: nn.Linear,
    out_features: int,
    hook: _BlockHook | None = None,
    name: str = "",
) -> torch.Tensor:
    """``layer`` restricted to its first ``out_features`` outputs and ``x.shape[-1]`` inputs,
    on views of its parameters (BLAS takes the strided weight as is; no copy). ``hook``, if
    given, maps that weight slice to the weight actually used (see :data:`WeightHook`)."""
    weight, in_features = layer.weight, x.shape[-1]
    if out_features != weight.shape[0] or in_features != weight.shape[1]:
        weight = weight[:out_features, :in_features]
    if hook is not None:
        weight = hook(name, weight)
    return F.linear(x, weight, _lead(layer.bias, out_features))


class _Attention(nn.Module):
    """Shared q/k/v (head-major rows) and output projection of one block."""

    def __init__(self, embed_dim: int, max_heads: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.qkv = nn.Linear(embed_dim, 3 * max_heads * head_dim)
        self.proj = nn.Linear(max_heads * head_dim, embed_dim)

    def forward(self, x: torch.Tensor, heads: int, hook: _BlockHook | None = None) -> torch.Tensor:
        b, n, e = x.shape
        a = heads * self.head_dim
        qkv = _linear(x, self.qkv, 3 * a, hook, "qkv")
        q, k, v = qkv.view(b, n, heads, 3, self.head_dim).permute(3, 0, 2, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(b, n, a)
        return _linear(x, self.proj, e, hook, "proj")


class _Mlp(nn.Module):
    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: torch.Tensor, hidden: int, hook: _BlockHook | None = None) -> torch.Tensor:
        e = x.shape[-1]
        x = F.gelu(_linear(x, self.fc1, hidden, hook, "fc1"))
        return _linear(x, self.fc2, e, hook, "fc2")


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    e = x.shape[-1]
    return F.layer_norm(x, (e,), _lead(norm.weight, e), _lead(norm.bias, e), _LN_EPS)


class _Block(nn.Module):
    """Pre-norm transformer block, as timm's ``Block`` without layer scale."""

    def __init__(self, embed_dim: int, max_heads: int, head_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self.attn = _Attention(embed_dim, max_heads, head_dim)
        self.norm2 = nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self.mlp = _Mlp(embed_dim, hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        heads: int,
        hidden: int,
        drop_rate: float,
        hook: _BlockHook | None = None,
    ) -> torch.Tensor:
        training = self.training and drop_rate > 0.0
        y = self.attn(_layer_norm(x, self.norm1), heads, hook)
        x = x + (drop_path(y, drop_rate, True) if training else y)
        y = self.mlp(_layer_norm(x, self.norm2), hidden, hook)
        return x + (drop_path(y, drop_rate, True) if training else y)


class ViTSupernet(Supernet):
    """Weight-entangled ViT covering every :class:`ViTArch` of a :class:`ViTSpaceConfig`.

    ``forward(x, arch)`` runs the subnet on images ``(B, in_chans, img, img)`` and returns
    logits ``(B, num_classes)``; ``extract(arch)`` returns a plain timm ``VisionTransformer``
    with the subnet's weights copied, equal in output within float32 rounding (eval mode).
    """

    def __init__(self, config: ViTSpaceConfig) -> None:
        super().__init__()
        self.config = config
        e = config.max_embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(
            config.in_chans, e, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, e))
        self.blocks = nn.ModuleList(
            _Block(e, config.max_heads, config.head_dim, config.max_hidden_dim)
            for _ in range(config.max_depth)
        )
        self.norm = nn.LayerNorm(e, eps=_LN_EPS)
        self.head = nn.Linear(e, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's default ViT initialisation ("" mode), on the full-size tensors."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.patch_embed.proj.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def no_weight_decay(self) -> set[str]:
        """Position embedding and class token get no weight decay (timm's ViT)."""
        return {"pos_embed", "cls_token"}

    def drop_path_rate(self, arch: ViTArch) -> float:
        """Stochastic-depth rate of ``arch``'s last block: the configured rate, scaled by
        ``embed_dim / supernet width`` when ``drop_path_scales_with_embed`` (AutoFormer). Earlier
        blocks follow timm's linear rule, in the supernet and in the extracted model alike."""
        rate = self.config.drop_path
        if self.config.drop_path_scales_with_embed:
            rate *= arch.embed_dim / self.config.max_embed_dim
        return rate

    def forward(
        self, x: torch.Tensor, arch: ViTArch, *, weight_hook: WeightHook | None = None
    ) -> torch.Tensor:
        features = self.forward_features(x, arch, weight_hook=weight_hook)
        return _linear(features, self.head, self.config.num_classes)

    def forward_features(
        self, x: torch.Tensor, arch: ViTArch, *, weight_hook: WeightHook | None = None
    ) -> torch.Tensor:
        """Pre-logits features ``(B, embed_dim)``: the final-normed class token (what timm's
        ``forward_head(..., pre_logits=True)`` returns), e.g. for feature-collapse analysis.

        ``weight_hook`` (see :data:`WeightHook`) lets a wrapper change the blocks' linear
        weights for this call, e.g. TAS-LoRA's merged experts; ``None`` runs the plain subnet."""
        validate_vit_arch(arch, self.config)
        e = arch.embed_dim
        proj = self.patch_embed.proj
        x = F.conv2d(x, _lead(proj.weight, e), _lead(proj.bias, e), stride=proj.stride)
        x = x.flatten(2).transpose(1, 2)
        cls = self.cls_token[..., :e].expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed[..., :e]
        rates = (
            drop_path_rates(self.drop_path_rate(arch), arch.depth)
            if self.training
            else [0.0] * arch.depth
        )
        for i in range(arch.depth):
            hidden = mlp_hidden_dim(e, arch.mlp_ratio[i])
            hook = None if weight_hook is None else functools.partial(weight_hook, i)
            x = self.blocks[i](x, arch.num_heads[i], hidden, rates[i], hook)
        # LayerNorm is per token and only the class token is pooled: normalise just that one.
        return _layer_norm(x[:, 0], self.norm)

    @torch.no_grad()
    def extract(self, arch: ViTArch, *, weight_hook: WeightHook | None = None) -> nn.Module:
        """A timm ``VisionTransformer`` holding copies of ``arch``'s weight slices.

        It is on the supernet's device and dtype, in the supernet's train/eval mode, and has
        the drop-path rates ``arch`` gets inside the supernet. ``weight_hook`` is applied to the
        blocks' linear weights (head-major qkv) before they are copied, exactly as in
        :meth:`forward_features`, so ``extract(a, weight_hook=h)`` equals
        ``forward(x, a, weight_hook=h)``.
        """
        validate_vit_arch(arch, self.config)
        ref = self.head.weight
        # Built on the meta device: every tensor is overwritten below, so skip allocation and
        # initialisation (about 1 s for an autoformer-base subnet), then load strictly, which
        # also proves that each parameter got a weight.
        model = build_timm_vit(
            **vit_timm_kwargs(self.config, arch),
            drop_path_rate=self.drop_path_rate(arch),
            init_weights=False,
            device="meta",
            dtype=ref.dtype,
        ).to_empty(device=ref.device)
        model.load_state_dict(self._subnet_state_dict(arch, weight_hook), strict=True)
        return model.train(self.training)

    def _subnet_state_dict(
        self, arch: ViTArch, weight_hook: WeightHook | None = None
    ) -> dict[str, torch.Tensor]:
        """The subnet's weights under timm's parameter names and layouts (views or, where
        ``weight_hook`` changed them, new tensors)."""
        e, hd = arch.embed_dim, self.config.head_dim
        state = {
            "patch_embed.proj.weight": self.patch_embed.proj.weight[:e],
            "patch_embed.proj.bias": self.patch_embed.proj.bias[:e],
            "cls_token": self.cls_token[..., :e],
            "pos_embed": self.pos_embed[..., :e],
            "norm.weight": self.norm.weight[:e],
            "norm.bias": self.norm.bias[:e],
            "head.weight": self.head.weight[:, :e],
            "head.bias": self.head.bias,
        }
        for i in range(arch.depth):
            blk, heads = self.blocks[i], arch.num_heads[i]
            a, h = heads * hd, mlp_hidden_dim(e, arch.mlp_ratio[i])
            p = f"blocks.{i}."
            weights = {
                "qkv": blk.attn.qkv.weight[: 3 * a, :e],
                "proj": blk.attn.proj.weight[:e, :a],
                "fc1": blk.mlp.fc1.weight[:h, :e],
                "fc2": blk.mlp.fc2.weight[:e, :h],
            }
            if weight_hook is not None:
                weights = {name: weight_hook(i, name, w) for name, w in weights.items()}
            # head-major [q_j k_j v_j]_j rows -> timm's [q_0..q_H | k_0..k_H | v_0..v_H] rows
            qkv_w = weights["qkv"].reshape(heads, 3, hd, e).transpose(0, 1)
            qkv_b = blk.attn.qkv.bias[: 3 * a].reshape(heads, 3, hd).transpose(0, 1)
            state.update(
                {
                    p + "norm1.weight": blk.norm1.weight[:e],
                    p + "norm1.bias": blk.norm1.bias[:e],
                    p + "attn.qkv.weight": qkv_w.reshape(3 * a, e),
                    p + "attn.qkv.bias": qkv_b.reshape(3 * a),
                    p + "attn.proj.weight": weights["proj"],
                    p + "attn.proj.bias": blk.attn.proj.bias[:e],
                    p + "norm2.weight": blk.norm2.weight[:e],
                    p + "norm2.bias": blk.norm2.bias[:e],
                    p + "mlp.fc1.weight": weights["fc1"],
                    p + "mlp.fc1.bias": blk.mlp.fc1.bias[:h],
                    p + "mlp.fc2.weight": weights["fc2"],
                    p + "mlp.fc2.bias": blk.mlp.fc2.bias[:e],
                }
            )
        return state


def vit_timm_kwargs(config: ViTSpaceConfig, arch: ViTArch) -> dict[str, object]:
    """JSON-serialisable kwargs of :func:`build_timm_vit` for ``arch`` (no drop path)."""
    return {
        "img_size": config.img_size,
        "patch_size": config.patch_size,
        "in_chans": config.in_chans,
        "num_classes": config.num_classes,
        "embed_dim": arch.embed_dim,
        "num_heads": list(arch.num_heads),
        "mlp_ratio": list(arch.mlp_ratio),
        "head_dim": config.head_dim,
    }
