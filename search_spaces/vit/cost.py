"""Analytic parameter count and multiply-accumulates of a ViT subnet.

Both are closed-form sums over the blocks, so pricing an arch costs microseconds; the search
calls them for every candidate before anything is evaluated. They describe the model
``ViTSupernet.extract(arch)`` returns (a timm ``VisionTransformer`` with class-token pooling):

* params: exactly ``sum(p.numel() for p in model.parameters())``;
* flops: multiply-accumulates (MACs) for ONE image of the patch-embedding convolution, every
  linear layer and both attention matmuls (``q @ k^T`` and ``attn @ v``); the head sees only the
  class token. LayerNorm, GELU, softmax, bias and residual additions are not counted, the same
  convention as ``torch.utils.flop_counter.FlopCounterMode``, which reports 2 x these MACs.
"""

from __future__ import annotations

from search_spaces.vit.arch import ViTArch
from search_spaces.vit.config import ViTSpaceConfig, mlp_hidden_dim


def vit_params(config: ViTSpaceConfig, arch: ViTArch) -> int:
    """Number of parameters of the extracted model."""
    e = arch.embed_dim
    patch = config.in_chans * config.patch_size**2
    total = e * patch + e  # patch embedding conv + bias
    total += e + config.num_tokens * e  # class token + position embedding
    for heads, ratio in zip(arch.num_heads, arch.mlp_ratio, strict=True):
        a = heads * config.head_dim
        h = mlp_hidden_dim(e, ratio)
        total += 2 * e  # norm1
        total += e * 3 * a + 3 * a  # qkv
        total += a * e + e  # proj
        total += 2 * e  # norm2
        total += e * h + h + h * e + e  # fc1, fc2
    total += 2 * e  # final norm
    total += e * config.num_classes + config.num_classes  # head
    return total


def vit_macs(config: ViTSpaceConfig, arch: ViTArch) -> int:
    """Multiply-accumulates of one forward pass on one image."""
    e = arch.embed_dim
    n = config.num_tokens
    total = config.num_patches * e * config.in_chans * config.patch_size**2
    for heads, ratio in zip(arch.num_heads, arch.mlp_ratio, strict=True):
        a = heads * config.head_dim
        h = mlp_hidden_dim(e, ratio)
        total += n * e * 3 * a  # qkv
        total += 2 * n * n * a  # q @ k^T and attn @ v
        total += n * a * e  # proj
        total += 2 * n * e * h  # fc1 + fc2
    total += e * config.num_classes  # head on the class token
    return total
