"""Analytic parameter count and multiply-accumulates of an extracted cell network.

Closed-form sums over the cells (microseconds per arch). They describe the model
``CellSupernet.extract(arch)`` returns (``network.py``):

* params: exactly ``sum(p.numel() for p in model.parameters())`` (convs have no bias, every
  BatchNorm is affine: 2 parameters per channel);
* flops: MACs for ONE image of every convolution and of the classifier, the convention of
  ``torch.utils.flop_counter.FlopCounterMode`` (which reports 2 x these). Pooling, BatchNorm,
  ReLU, additions and concatenations are not counted.

Checked against NAS-Bench-201's own figures: for the ``nas-bench-201`` preset the all-``none``
and all-``nor_conv_3x3`` cells give 73,306 and 1,531,546 parameters, the benchmark's
0.073306 / 1.531546 MB (min/max over its CIFAR-10 cells), and 7,783,040 / 220,119,680 MACs; the
benchmark's 7.78305 / 220.11969 MFLOPs also count the classifier's 10 bias additions.
"""

from __future__ import annotations

from search_spaces.cell.arch import DARTS_NODES, DartsArch, NB201Arch
from search_spaces.cell.config import CellSpaceConfig

_NB201_CONV_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}
_DARTS_KERNEL = {"sep_conv_3x3": 3, "sep_conv_5x5": 5, "dil_conv_3x3": 3, "dil_conv_5x5": 5}


def _halve(size: int) -> int:
    """Output size of every stride-2 op of both skeletons (3x3 pad 1, 1x1, 2x2 pool) on an
    even input, the only kind ``CellSpaceConfig`` allows."""
    return size // 2


def nb201_cost(config: CellSpaceConfig, arch: NB201Arch) -> dict[str, int]:
    """``{"params", "flops"}`` of the NB201 ``TinyNetwork`` with cell ``arch``."""
    c, size = config.channels, config.img_size
    params = config.in_chans * c * 9 + 2 * c  # stem
    macs = size * size * c * config.in_chans * 9
    c_prev = c
    for stage in range(3):
        cs = c * 2**stage
        if stage:  # ResNet basic block c_prev -> cs, stride 2
            size = _halve(size)
            hw = size * size
            params += 9 * c_prev * cs + 2 * cs + 9 * cs * cs + 2 * cs + c_prev * cs
            macs += hw * cs * c_prev * 9 + hw * cs * cs * 9 + hw * cs * c_prev
        hw = size * size
        for op in arch.ops:
            kernel = _NB201_CONV_KERNEL.get(op)
            if kernel is not None:
                params += config.cells_per_stage * (kernel * kernel * cs * cs + 2 * cs)
                macs += config.cells_per_stage * hw * cs * cs * kernel * kernel
        c_prev = cs
    params += 2 * c_prev  # lastact BN
    params += c_prev * config.num_classes + config.num_classes
    macs += c_prev * config.num_classes
    return {"params": params, "flops": macs}


def _darts_op_cost(op: str, c: int, hw_out: int, strided: bool) -> tuple[int, int]:
    """(params, MACs) of one DARTS op with ``c`` channels and ``hw_out`` output pixels."""
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        return 0, 0
    if op == "skip_connect":
        # identity, or FactorizedReduce: two 1x1 convs c -> c/2 at the output size, then BN
        return (c * c + 2 * c, hw_out * c * c) if strided else (0, 0)
    k2 = _DARTS_KERNEL[op] ** 2
    unit_params = c * k2 + c * c + 2 * c  # depthwise + pointwise + BN
    unit_macs = hw_out * (c * k2 + c * c)
    if op.startswith("sep_conv"):
        return 2 * unit_params, 2 * unit_macs
    return unit_params, unit_macs


def darts_cost(config: CellSpaceConfig, arch: DartsArch) -> dict[str, int]:
    """``{"params", "flops"}`` of the DARTS network with genotype ``arch``."""
    c_stem = config.stem_multiplier * config.channels
    size = config.img_size
    params = config.in_chans * c_stem * 9 + 2 * c_stem
    macs = size * size * c_stem * config.in_chans * 9
    c_prev_prev, c_prev, c = c_stem, c_stem, config.channels
    for i in range(config.layers):
        reduction = i in config.reduction_layers
        if reduction:
            c *= 2
        hw_in = size * size  # s1's size; s0 is preprocessed to it (FactorizedReduce if needed)
        # preprocess0 (ReLUConvBN 1x1 or FactorizedReduce: both c_prev_prev * c weights)
        params += c_prev_prev * c + 2 * c + c_prev * c + 2 * c
        macs += hw_in * c_prev_prev * c + hw_in * c_prev * c
        if reduction:
            size = _halve(size)
        hw_out = size * size
        gene = arch.reduce if reduction else arch.normal
        for op, src in gene:
            p, m = _darts_op_cost(op, c, hw_out, reduction and src < 2)
            params += p
            macs += m
        c_prev_prev, c_prev = c_prev, len(DARTS_NODES) * c
    params += c_prev * config.num_classes + config.num_classes
    macs += c_prev * config.num_classes
    return {"params": params, "flops": macs}
