"""The two cell networks, for the supernet's body and for an extracted cell alike.

One class per skeleton, built with a set of op modules per edge:

* with ``ops=None`` (``normal=None, reduce=None`` for DARTS) every candidate op of every edge
  gets its own module: the weight-sharing supernet's body (``CellSupernet.net``), run with an
  arch passed to ``forward(x, arch_ops)``;
* with one arch, only the chosen op of each edge exists, under the SAME module names: the
  standalone network that ``CellSupernet.extract`` returns, ``forward(x) -> logits``.

Because names coincide, extraction is a filtered copy of the supernet body's state dict, and
the discrete forward is literally the same code in both. :func:`build_cell_network` is the
export builder (``SearchSpace.export_spec``): it rebuilds an extracted network from plain JSON.

Skeletons:

* :class:`NB201Network`: AutoDL-Projects' ``TinyNetwork`` (the network every NAS-Bench-201 cell
  was trained in): stem conv 3x3 + BN; ``N`` cells at ``C``, a ResNet basic block (stride 2)
  to ``2C``, ``N`` cells, a block to ``4C``, ``N`` cells; BN + ReLU; global average pool;
  linear classifier. Module names follow ``TinyNetwork`` (``stem``, ``cells.<i>``,
  ``lastact``, ``classifier``).
* :class:`DartsNetwork`: DARTS's search ``Network`` (``model_search.py``) with affine
  BatchNorm: stem conv 3x3 + BN to ``stem_multiplier * C``; ``layers`` cells, reduction cells
  (channels doubled, stride 2 on the edges from the cell inputs) at ``layers // 3`` and
  ``2 * layers // 3``; each cell preprocesses its two inputs (ReLUConvBN 1x1, or
  FactorizedReduce after a reduction cell) and outputs the concat of its 4 intermediate nodes;
  global average pool; linear classifier. With a genotype this is DARTS's ``NetworkCIFAR``
  without the auxiliary head and drop path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from search_spaces.cell.arch import (
    DARTS_CELL_TYPES,
    DARTS_EDGES,
    DARTS_NODES,
    NB201_EDGES,
    Gene,
    darts_edge_index,
)
from search_spaces.cell.config import CellSpaceConfig
from search_spaces.cell.ops import (
    DARTS_OPS,
    NB201_OPS,
    FactorizedReduce,
    ReLUConvBN,
    ResNetBasicBlock,
    darts_op,
    nb201_op,
)


def _sum(terms: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Sum of a node's incoming terms; zeros shaped like ``like`` when every edge is ``none``."""
    if not terms:
        return torch.zeros_like(like)
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    return out


# ---- NAS-Bench-201 -----------------------------------------------------------------------------


class NB201Cell(nn.Module):
    """A 4-node NB201 cell: node ``j`` = sum over ``i < j`` of ``op_{j<-i}(node i)``.

    ``edges[e]`` holds a module per op instantiated on edge ``e`` (all non-``none`` ops in the
    supernet, the chosen one in an extracted cell), keyed by op name.
    """

    def __init__(self, channels: int, edge_ops: Sequence[Sequence[str]]) -> None:
        super().__init__()
        self.channels = channels
        self.edges = nn.ModuleList(
            nn.ModuleDict({op: nb201_op(op, channels) for op in ops if op != "none"})
            for ops in edge_ops
        )

    def forward(self, x: torch.Tensor, ops: Sequence[str]) -> torch.Tensor:
        nodes = [x]
        for target in (1, 2, 3):
            terms = [
                self.edges[e][ops[e]](nodes[src])
                for e, (to, src) in enumerate(NB201_EDGES)
                if to == target and ops[e] != "none"
            ]
            nodes.append(_sum(terms, x))
        return nodes[-1]


RunNB201Cell = Callable[[int, NB201Cell, torch.Tensor], torch.Tensor]
"""``run(k, cell, x) -> y``: how the ``k``-th cell (in network order) is run."""


class NB201Network(nn.Module):
    """AutoDL's ``TinyNetwork`` with a given cell, or with every op (``ops=None``)."""

    def __init__(
        self,
        *,
        in_chans: int,
        num_classes: int,
        channels: int,
        cells_per_stage: int,
        ops: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.ops = None if ops is None else tuple(ops)
        edge_ops = [NB201_OPS] * len(NB201_EDGES) if self.ops is None else [[op] for op in self.ops]
        c = channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, c, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        layers: list[nn.Module] = []
        stages: list[int] = []
        c_prev = c
        for stage in range(3):
            c_stage = c * 2**stage
            if stage:
                layers.append(ResNetBasicBlock(c_prev, c_stage))
            for _ in range(cells_per_stage):
                layers.append(NB201Cell(c_stage, edge_ops))
                stages.append(stage)
            c_prev = c_stage
        self.cells = nn.ModuleList(layers)
        self.cell_stages: tuple[int, ...] = tuple(stages)
        """Stage (0, 1, 2) of each cell, in network order."""
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.num_features = c_prev

    def forward(self, x: torch.Tensor, ops: Sequence[str] | None = None) -> torch.Tensor:
        """Logits of the cell ``ops`` (default: the network's own cell)."""
        return self.classifier(self.forward_features(x, ops))

    def forward_features(self, x: torch.Tensor, ops: Sequence[str] | None = None) -> torch.Tensor:
        """Pooled pre-logits features ``(B, 4C)``."""
        ops = self.ops if ops is None else tuple(ops)
        if ops is None:
            raise ValueError("this NB201Network holds every op; pass the cell's ops to forward")
        return self.run(x, lambda k, cell, h: cell(h, ops))

    def run(self, x: torch.Tensor, run_cell: RunNB201Cell) -> torch.Tensor:
        """The skeleton around the cells, each cell run by ``run_cell``; pooled features."""
        x = self.stem(x)
        k = 0
        for layer in self.cells:
            if isinstance(layer, NB201Cell):
                x = run_cell(k, layer, x)
                k += 1
            else:
                x = layer(x)
        return self.global_pooling(self.lastact(x)).flatten(1)


# ---- DARTS -------------------------------------------------------------------------------------


class DartsCell(nn.Module):
    """A DARTS cell: preprocess both inputs to ``C`` channels, 4 nodes each summing two
    ``op(state)``, output the concat of nodes 2..5 (``4C`` channels).

    ``edges[str(e)]`` (``e`` a row of :data:`DARTS_EDGES`) holds a module per op on that edge,
    keyed by op name; in an extracted cell only the chosen edges and ops exist.
    """

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        gene: Gene | None,
    ) -> None:
        super().__init__()
        c = channels
        self.reduction = reduction
        self.channels = channels
        self.preprocess0 = (
            FactorizedReduce(c_prev_prev, c)
            if reduction_prev
            else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        )
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        if gene is None:
            chosen = {e: DARTS_OPS[1:] for e in range(len(DARTS_EDGES))}
        else:
            chosen = {
                darts_edge_index(DARTS_NODES[p // 2], src): (op,)
                for p, (op, src) in enumerate(gene)
            }
        self.edges = nn.ModuleDict()
        for e in sorted(chosen):
            stride = 2 if reduction and DARTS_EDGES[e][1] < 2 else 1
            self.edges[str(e)] = nn.ModuleDict({op: darts_op(op, c, stride) for op in chosen[e]})

    def preprocess(self, s0: torch.Tensor, s1: torch.Tensor) -> list[torch.Tensor]:
        return [self.preprocess0(s0), self.preprocess1(s1)]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, gene: Gene) -> torch.Tensor:
        states = self.preprocess(s0, s1)
        for i, node in enumerate(DARTS_NODES):
            (op_a, in_a), (op_b, in_b) = gene[2 * i], gene[2 * i + 1]
            a = self.edges[str(darts_edge_index(node, in_a))][op_a](states[in_a])
            b = self.edges[str(darts_edge_index(node, in_b))][op_b](states[in_b])
            states.append(a + b)
        return torch.cat(states[2:], dim=1)


RunDartsCell = Callable[[int, DartsCell, torch.Tensor, torch.Tensor], torch.Tensor]
"""``run(k, cell, s0, s1) -> output``: how the ``k``-th cell is run."""


class DartsNetwork(nn.Module):
    """DARTS's search network with a genotype, or with every op (``normal=reduce=None``)."""

    def __init__(
        self,
        *,
        in_chans: int,
        num_classes: int,
        channels: int,
        layers: int,
        stem_multiplier: int = 3,
        normal: Gene | None = None,
        reduce: Gene | None = None,
    ) -> None:
        super().__init__()
        if (normal is None) != (reduce is None):
            raise ValueError("give both the normal and the reduce gene, or neither")
        self.genes: dict[str, Gene] | None = None
        if normal is not None and reduce is not None:
            self.genes = {"normal": _as_gene(normal), "reduce": _as_gene(reduce)}
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
        reductions = (layers // 3, 2 * layers // 3)
        cells, types, stages = [], [], []
        reduction_prev, stage = False, 0
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
                stage += 1
            kind = "reduce" if reduction else "normal"
            gene = None if self.genes is None else self.genes[kind]
            cells.append(DartsCell(c_prev_prev, c_prev, c_curr, reduction, reduction_prev, gene))
            types.append(kind)
            stages.append(stage)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, len(DARTS_NODES) * c_curr
        self.cells = nn.ModuleList(cells)
        self.cell_types: tuple[str, ...] = tuple(types)
        """``"normal"`` or ``"reduce"`` for each cell, in network order."""
        self.cell_stages: tuple[int, ...] = tuple(stages)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.num_features = c_prev

    def forward(self, x: torch.Tensor, genes: dict[str, Gene] | None = None) -> torch.Tensor:
        """Logits of the genotype ``genes`` (``{"normal": ..., "reduce": ...}``; default: the
        network's own)."""
        return self.classifier(self.forward_features(x, genes))

    def forward_features(
        self, x: torch.Tensor, genes: dict[str, Gene] | None = None
    ) -> torch.Tensor:
        """Pooled pre-logits features ``(B, 4 * C_last)``."""
        genes = self.genes if genes is None else genes
        if genes is None:
            raise ValueError("this DartsNetwork holds every op; pass the genotype to forward")
        return self.run(
            x, lambda k, cell, s0, s1: cell(s0, s1, genes["reduce" if cell.reduction else "normal"])
        )

    def run(self, x: torch.Tensor, run_cell: RunDartsCell) -> torch.Tensor:
        """The skeleton around the cells, each cell run by ``run_cell``; pooled features."""
        s0 = s1 = self.stem(x)
        for k, cell in enumerate(self.cells):
            s0, s1 = s1, run_cell(k, cell, s0, s1)
        return self.global_pooling(s1).flatten(1)


def _as_gene(gene: Sequence[Sequence[Any]]) -> Gene:
    return tuple((str(op), int(src)) for op, src in gene)


# ---- the export builder ------------------------------------------------------------------------


def cell_network_kwargs(config: CellSpaceConfig, arch: Any) -> dict[str, Any]:
    """Plain-JSON kwargs of :func:`build_cell_network` for ``arch`` (an NB201Arch or a
    DartsArch of a space built from ``config``; not validated here)."""
    common = {
        "kind": config.kind,
        "in_chans": config.in_chans,
        "num_classes": config.num_classes,
        "channels": config.channels,
    }
    if config.kind == "nb201":
        return {**common, "cells_per_stage": config.cells_per_stage, "ops": list(arch.ops)}
    return {
        **common,
        "layers": config.layers,
        "stem_multiplier": config.stem_multiplier,
        **{t: [[op, src] for op, src in getattr(arch, t)] for t in DARTS_CELL_TYPES},
    }


def build_cell_network(*, kind: str, **kwargs: Any) -> NB201Network | DartsNetwork:
    """Rebuild an extracted cell network from ``SearchSpace.export_spec(arch)["kwargs"]``.

    ``kind="nb201"``: ``in_chans, num_classes, channels, cells_per_stage, ops`` (6 op names);
    ``kind="darts"``: ``in_chans, num_classes, channels, layers, stem_multiplier, normal,
    reduce`` (8 ``[op, input]`` pairs each). The result has the extracted model's parameter
    names and shapes; its weights are freshly initialised.
    """
    if kind == "nb201":
        return NB201Network(**kwargs)
    if kind == "darts":
        return DartsNetwork(**kwargs)
    raise ValueError(f"kind={kind!r} is not allowed; allowed: ['nb201', 'darts']")


__all__ = [
    "DartsCell",
    "DartsNetwork",
    "NB201Cell",
    "NB201Network",
    "build_cell_network",
    "cell_network_kwargs",
]
