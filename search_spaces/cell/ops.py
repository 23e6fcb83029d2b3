"""The candidate operations of the two cell spaces, as their benchmarks define them.

NAS-Bench-201 (AutoDL-Projects ``xautodl/models/cell_operations.py``, the ``nas-bench-201``
op set) and DARTS (``quark0/darts`` ``cnn/operations.py``). Every op here keeps its reference
layout (module order inside ``nn.Sequential``, conv bias off, BatchNorm after the conv), so a
parameter count or a state dict reads like the reference's. All BatchNorms are affine, as in
the benchmarks' evaluation networks: a cell extracted from the supernet is then exactly the
network that would be trained from scratch. (The reference search networks use non-affine
BN; we deliberately do not, so that extraction is exact.)

An op maps ``(B, C, H, W)`` to ``(B, C, H/stride, W/stride)``. ``none`` (the zero op) has no
module at all: a cell skips it in a discrete forward and the mixed forward treats its output as
zeros.
"""

from __future__ import annotations

import torch
from torch import nn

NB201_OPS: tuple[str, ...] = (
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
)
"""NAS-Bench-201's five ops in AutoDL's order (the columns of the NB201 importance matrix)."""

DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""DARTS's eight ``PRIMITIVES`` in their order (the columns of the DARTS importance matrices).
A discrete DARTS cell (a genotype) uses the seven that are not ``none``."""

DARTS_GENOTYPE_OPS: tuple[str, ...] = DARTS_OPS[1:]

POOL_OPS: frozenset[str] = frozenset({"max_pool_3x3", "avg_pool_3x3"})


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv (no bias) -> BatchNorm: NB201's ``nor_conv_*`` and both benchmarks'
    preprocessing. Children ``0`` ReLU, ``1`` conv, ``2`` BN (AutoDL/DARTS ``op.*`` order)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
        )


class DilConv(nn.Sequential):
    """DARTS ``dil_conv_*``: ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int, dilation: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )


class SepConv(nn.Sequential):
    """DARTS ``sep_conv_*``: two (ReLU, depthwise, pointwise, BN) stacks; only the first
    depthwise conv has the stride."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, padding, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, 1, padding, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )


class FactorizedReduce(nn.Module):
    """Halves the resolution with two 1x1 stride-2 convs on pixel grids offset by one, their
    outputs concatenated (``c_out / 2`` channels each), then BN. DARTS's stride-2
    ``skip_connect`` and the preprocessing of a cell that follows a reduction cell."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even c_out, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class ResNetBasicBlock(nn.Module):
    """NB201's reduction block between stages (AutoDL ``ResNetBasicblock``, stride 2):
    ``conv_b(conv_a(x)) + downsample(x)`` with ReLUConvBN 3x3 convs (the first strided) and an
    AvgPool2d(2) -> 1x1 conv (no BN) shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def nb201_op(name: str, channels: int) -> nn.Module:
    """The module of NB201 op ``name`` inside a cell (stride 1, ``channels`` in and out).

    ``avg_pool_3x3`` needs no 1x1 preprocessing here (AutoDL adds one only when the channel
    count changes, which never happens inside an NB201 cell); ``skip_connect`` is the identity.
    """
    c = channels
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, 0)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"NB201 op {name!r} has no module; allowed: {list(NB201_OPS[1:])}")


def darts_op(name: str, channels: int, stride: int) -> nn.Module:
    """The module of DARTS op ``name`` (``operations.py`` ``OPS[name](C, stride, affine=True)``)."""
    c = channels
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name == "sep_conv_3x3":
        return SepConv(c, 3, stride, 1)
    if name == "sep_conv_5x5":
        return SepConv(c, 5, stride, 2)
    if name == "dil_conv_3x3":
        return DilConv(c, 3, stride, 2, 2)
    if name == "dil_conv_5x5":
        return DilConv(c, 5, stride, 4, 2)
    raise ValueError(f"DARTS op {name!r} has no module; allowed: {list(DARTS_GENOTYPE_OPS)}")
