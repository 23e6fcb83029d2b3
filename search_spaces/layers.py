"""Small layer functions the ViT families share, as timm computes them (same draws, same
results), written out so that building, training and scoring a supernet never imports timm:
importing timm pulls in torchvision and torch._dynamo (3-5 s per process), which the driver
and every Ray worker would pay without building a timm model. ``extract`` still returns one."""

from __future__ import annotations

import math

import torch


def trunc_normal_(
    tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
) -> torch.Tensor:
    """``timm.layers.trunc_normal_``: normal(mean, std) truncated to [a, b], by the inverse CDF
    of a uniform draw (one ``uniform_`` per call, so seeded results equal timm's)."""

    def norm_cdf(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    with torch.no_grad():
        low, high = norm_cdf((a - mean) / std), norm_cdf((b - mean) / std)
        tensor.uniform_(2 * low - 1, 2 * high - 1)
        tensor.erfinv_()
        tensor.mul_(std * math.sqrt(2.0))
        tensor.add_(mean)
        tensor.clamp_(min=a, max=b)
    return tensor


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """``timm.layers.drop_path``: zero whole samples of the residual branch ``x`` with
    probability ``rate`` and scale the kept ones by ``1 / (1 - rate)``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """``timm.layers.drop.calculate_drop_path_rates``: per-block rates rising linearly from 0
    to ``rate`` over ``depth`` blocks."""
    return [x.item() for x in torch.linspace(0, rate, depth, device="cpu")]
