"""The cell supernet of both kinds: every op on every edge, with its own weights.

``CellSupernet.net`` is the kind's network (``network.py``) built with every candidate op on
every edge (the standard DARTS / NB201 supernet: no weight sharing between ops, each (edge, op)
pair of each cell has its own module). Two ways to run it:

* ``forward(x, arch)``: ONE discrete cell, only the chosen op per edge (NB201 ``none`` edges
  add nothing; a DARTS node sums its two chosen ``(op, input)``), so inherited weights can be
  scored and ``extract(arch)`` is exact;
* ``forward(x, None)``: the MIXED supernet, every op on every edge, each edge's outputs summed
  with the importances of the configured selector (``selector.py``): IT-NAS's Indicator Token
  (per sample) or DARTS's softmax over alphas. As in DARTS's ``MixedOp``, DARTS-kind pooling
  ops are followed by a parameter-free BatchNorm (``affine=False``) in mixed mode only
  (``pool_norms``), which keeps their scale comparable to the normalised conv outputs; NB201
  follows AutoDL's NB201 search cells, which have none. The discrete forward and the extracted
  network never use them.

Parameters: ``net.*`` are the weights; ``selector.*`` (Indicator Tokens, transformer,
projections, op embeddings; or the alphas) are :meth:`CellSupernet.selector_parameters`, which
bi-level training steps with their own optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from search_spaces.base import Supernet
from search_spaces.cell.arch import (
    DARTS_EDGES,
    DARTS_NODES,
    NB201_EDGES,
    DartsArch,
    NB201Arch,
    darts_edge_index,
    validate_darts_arch,
    validate_nb201_arch,
)
from search_spaces.cell.config import CellSpaceConfig
from search_spaces.cell.network import (
    DartsCell,
    DartsNetwork,
    NB201Cell,
    NB201Network,
    build_cell_network,
    cell_network_kwargs,
)
from search_spaces.cell.ops import DARTS_OPS, NB201_OPS, POOL_OPS
from search_spaces.cell.selector import IndicatorTokenSelector, darts_alphas

Record = dict[str, list[torch.Tensor]]
"""Per cell type, the ``(B, edges, ops)`` importances of each cell instance, in network order."""


class CellSupernet(Supernet):
    """The NB201 or DARTS supernet of a :class:`CellSpaceConfig` (see the module docstring)."""

    def __init__(self, config: CellSpaceConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.kind == "nb201":
            self.net: NB201Network | DartsNetwork = NB201Network(
                in_chans=c.in_chans,
                num_classes=c.num_classes,
                channels=c.channels,
                cells_per_stage=c.cells_per_stage,
            )
            self.ops: tuple[str, ...] = NB201_OPS
            self.cell_types: tuple[str, ...] = ("cell",) * len(self.net.cell_stages)
            num_edges = len(NB201_EDGES)
        else:
            self.net = DartsNetwork(
                in_chans=c.in_chans,
                num_classes=c.num_classes,
                channels=c.channels,
                layers=c.layers,
                stem_multiplier=c.stem_multiplier,
            )
            self.ops = DARTS_OPS
            self.cell_types = self.net.cell_types
            num_edges = len(DARTS_EDGES)
        self.types: tuple[str, ...] = tuple(dict.fromkeys(self.cell_types))
        counters: dict[str, int] = {}
        instance = []
        for t in self.cell_types:
            instance.append(counters.get(t, 0))
            counters[t] = instance[-1] + 1
        self.instance: tuple[int, ...] = tuple(instance)
        """Index of each cell among the cells of its type."""
        stages = self.net.cell_stages
        if c.selector == "it":
            self.selector: nn.Module = nn.ModuleDict(
                {
                    t: IndicatorTokenSelector(
                        num_cells=counters[t],
                        num_edges=num_edges,
                        num_ops=len(self.ops),
                        stage_channels={
                            s: c.channels * 2**s
                            for s, ct in zip(stages, self.cell_types, strict=True)
                            if ct == t
                        },
                        dim=c.it_dim,
                        layers=c.it_layers,
                        heads=c.it_heads,
                    )
                    for t in self.types
                }
            )
        else:
            self.selector = nn.ParameterDict(
                {t: darts_alphas(num_edges, len(self.ops)) for t in self.types}
            )
        if c.kind == "darts":
            self.pool_norms = nn.ModuleList(
                nn.ModuleDict(
                    {
                        f"{e}_{op}": nn.BatchNorm2d(cell.channels, affine=False)
                        for e in range(num_edges)
                        for op in DARTS_OPS
                        if op in POOL_OPS
                    }
                )
                for cell in self.net.cells
            )

    # ---- discrete and mixed forward -----------------------------------------------------------
    def validate(self, arch: Any) -> None:
        """``ValueError`` naming the offending field when ``arch`` is not one of this space's."""
        if self.config.kind == "nb201":
            validate_nb201_arch(arch)
        else:
            validate_darts_arch(arch)

    def _net_arch(self, arch: NB201Arch | DartsArch) -> Any:
        self.validate(arch)
        if isinstance(arch, NB201Arch):
            return arch.ops
        return {"normal": arch.normal, "reduce": arch.reduce}

    def forward(self, x: torch.Tensor, arch: NB201Arch | DartsArch | None) -> torch.Tensor:
        """Logits of the discrete cell ``arch``, or of the mixed supernet when ``arch`` is None."""
        return self.net.classifier(self.forward_features(x, arch))

    def forward_features(self, x: torch.Tensor, arch: NB201Arch | DartsArch | None) -> torch.Tensor:
        """Pooled pre-logits features ``(B, width)`` (discrete, or mixed when ``arch`` is None)."""
        if arch is None:
            return self._mixed_features(x, None)
        return self.net.forward_features(x, self._net_arch(arch))

    def _mixed_features(self, x: torch.Tensor, record: Record | None) -> torch.Tensor:
        if isinstance(self.net, NB201Network):
            return self.net.run(x, lambda k, cell, h: self._mixed_nb201(k, cell, h, record))
        return self.net.run(x, lambda k, cell, s0, s1: self._mixed_darts(k, cell, s0, s1, record))

    def _importances(
        self,
        k: int,
        edges: Sequence[int],
        outs: list[list[torch.Tensor | None]],
        like: torch.Tensor,
    ) -> torch.Tensor:
        """``(B or 1, len(edges), O)`` importances of the ops on ``edges`` of cell ``k``."""
        t = self.cell_types[k]
        if self.config.selector == "darts":
            return self.selector[t][list(edges)].softmax(dim=-1).unsqueeze(0)
        b, c = like.shape[0], like.shape[1]
        zeros = like.new_zeros(b, c)
        pooled = torch.stack(
            [
                torch.stack([zeros if out is None else out.mean((2, 3)) for out in edge], dim=1)
                for edge in outs
            ],
            dim=1,
        )  # (B, E, O, C)
        return self.selector[t](self.instance[k], edges, self.net.cell_stages[k], pooled)

    @staticmethod
    def _mix(
        weights: torch.Tensor, outs: list[list[torch.Tensor | None]], like: torch.Tensor
    ) -> torch.Tensor:
        """Sum over the edges and ops of ``weights[:, e, o] * outs[e][o]`` (``None``: zero)."""
        total = None
        for e, edge in enumerate(outs):
            for o, out in enumerate(edge):
                if out is None:
                    continue
                term = weights[:, e, o].view(-1, 1, 1, 1) * out
                total = term if total is None else total + term
        return torch.zeros_like(like) if total is None else total

    def _mixed_nb201(
        self, k: int, cell: NB201Cell, x: torch.Tensor, record: Record | None
    ) -> torch.Tensor:
        nodes = [x]
        cell_importances = []
        for target in (1, 2, 3):
            edges = [e for e, (to, _) in enumerate(NB201_EDGES) if to == target]
            outs = [
                [
                    None if op == "none" else cell.edges[e][op](nodes[NB201_EDGES[e][1]])
                    for op in self.ops
                ]
                for e in edges
            ]
            weights = self._importances(k, edges, outs, x)
            cell_importances.append(weights)
            nodes.append(self._mix(weights, outs, x))
        if record is not None:
            record[self.cell_types[k]].append(torch.cat(cell_importances, dim=1))
        return nodes[-1]

    def _mixed_darts(
        self,
        k: int,
        cell: DartsCell,
        s0: torch.Tensor,
        s1: torch.Tensor,
        record: Record | None,
    ) -> torch.Tensor:
        states = cell.preprocess(s0, s1)
        norms = self.pool_norms[k]
        cell_importances = []
        for node in DARTS_NODES:
            edges = [darts_edge_index(node, j) for j in range(node)]
            outs: list[list[torch.Tensor | None]] = []
            for e, j in zip(edges, range(node), strict=True):
                row: list[torch.Tensor | None] = []
                for op in self.ops:
                    if op == "none":
                        row.append(None)
                        continue
                    out = cell.edges[str(e)][op](states[j])
                    if op in POOL_OPS:
                        out = norms[f"{e}_{op}"](out)
                    row.append(out)
                outs.append(row)
            like = next(out for out in outs[0] if out is not None)
            weights = self._importances(k, edges, outs, like)
            cell_importances.append(weights)
            states.append(self._mix(weights, outs, like))
        if record is not None:
            record[self.cell_types[k]].append(torch.cat(cell_importances, dim=1))
        return torch.cat(states[2:], dim=1)

    # ---- operation selection ------------------------------------------------------------------
    def selector_parameters(self) -> list[nn.Parameter]:
        """The selector's parameters: Indicator Tokens, transformer, projections, op embeddings
        (``selector: it``) or the alphas (``selector: darts``). Every other one is a weight."""
        return list(self.selector.parameters())

    @torch.no_grad()
    def selection_scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per cell type (NB201 ``"cell"``: 6 x 5; DARTS ``"normal"``, ``"reduce"``: 14 x 8, rows
        in :data:`~search_spaces.cell.arch.DARTS_EDGES` order) the importance of every op on every
        edge, averaged over the batch and the cell instances of the type; rows sum to 1.

        ``selector: it`` runs one mixed forward over ``x`` in the module's current mode (call
        ``.eval()`` for a validation pass). ``selector: darts`` importances do not depend on the
        input: they are ``softmax(alpha)``, returned without a forward. Detached tensors.
        """
        if self.config.selector == "darts":
            return {t: self.selector[t].softmax(dim=-1).detach().clone() for t in self.types}
        record: Record = {t: [] for t in self.types}
        self._mixed_features(x, record)
        return {t: torch.stack(record[t]).mean(dim=(0, 1)).detach() for t in self.types}

    # ---- extraction ---------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, arch: NB201Arch | DartsArch) -> nn.Module:
        """The standalone network of ``arch`` (``NB201Network`` or ``DartsNetwork``) with copies
        of its weights and BatchNorm statistics, on the supernet's device and dtype, in its
        train/eval mode; equal in output to ``self(x, arch)``. Its parameter names are those of
        ``self.net`` (without the ``net.`` prefix), restricted to the chosen ops."""
        self.validate(arch)
        ref = self.net.classifier.weight
        with torch.device("meta"):
            model = build_cell_network(**cell_network_kwargs(self.config, arch))
        model = model.to(dtype=ref.dtype).to_empty(device=ref.device)
        wanted = model.state_dict().keys()
        source = self.net.state_dict()
        model.load_state_dict({name: source[name] for name in wanted}, strict=True)
        return model.train(self.training)


__all__ = ["CellSupernet"]
