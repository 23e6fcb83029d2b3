"""Operation selectors of the mixed cell supernet: IT-NAS's Indicator Token, and DARTS's alphas.

A selector turns the candidate outputs of an edge into op importances (a softmax over the ops);
the mixed supernet's edge output is the importance-weighted sum of the candidates.

:class:`IndicatorTokenSelector` (IT-NAS, DESIGN.md section 4.4, our reading; the paper's code is
not public). For each edge, every op's output is global-average-pooled and projected
(``Linear(C_stage, it_dim)``, one per stage, since the cell width doubles per stage) to a token,
plus a learned embedding of the op's type; a learnable Indicator Token of the edge joins them;
a small pre-norm transformer (``it_layers`` x ``nn.TransformerEncoderLayer``, ``it_heads``
heads, FFN ``2 * it_dim``, no dropout) attends over the ``1 + O`` tokens; the importance of op
``o`` is ``softmax_o(q(z_IT) . k(z_o) / sqrt(it_dim))`` with linear query/key projections. It
depends on the input, so importances are per sample.

Choices (the paper leaves them open):

* one selector per cell type (NB201 ``"cell"``; DARTS ``"normal"`` and ``"reduce"``): the
  transformer, op embeddings, q/k and projections are shared by every edge and every cell of
  that type, while the Indicator Tokens are per edge of every cell INSTANCE (``tokens[cell,
  edge]``), so each edge of each cell asks its own question;
* the zero op (``none``) takes part: its output is zeros, its token is the projection of a zero
  vector (the projection's bias) plus its type embedding;
* a final LayerNorm on the transformer output (pre-norm layers leave it unnormalised).

:func:`darts_alphas` is the baseline: one ``(edges, ops)`` alpha tensor per cell type, shared by
all cells of that type, initialised ``1e-3 * randn`` (DARTS), importances ``softmax(alpha)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn


class IndicatorTokenSelector(nn.Module):
    """IT-NAS's selector for the edges of one cell type (see the module docstring).

    Args:
        num_cells: cell instances of this type in the network.
        num_edges: edges per cell.
        num_ops: candidate ops per edge (``none`` included).
        stage_channels: ``{stage: channels}`` of the stages where cells of this type occur.
        dim, layers, heads: token width, transformer layers and attention heads.
    """

    def __init__(
        self,
        *,
        num_cells: int,
        num_edges: int,
        num_ops: int,
        stage_channels: Mapping[int, int],
        dim: int,
        layers: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.tokens = nn.Parameter(torch.zeros(num_cells, num_edges, dim))
        self.op_embed = nn.Parameter(torch.zeros(num_ops, dim))
        self.proj = nn.ModuleDict(
            {str(stage): nn.Linear(c, dim) for stage, c in sorted(stage_channels.items())}
        )
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.tokens, std=0.02)
        nn.init.trunc_normal_(self.op_embed, std=0.02)

    def forward(
        self, cell: int, edges: Sequence[int], stage: int, pooled: torch.Tensor
    ) -> torch.Tensor:
        """Importances ``(B, E, O)`` of the ops on ``edges`` of cell instance ``cell``, from the
        pooled op outputs ``pooled`` ``(B, E, O, C_stage)``; each ``[b, e]`` row sums to 1."""
        b, e, o, _ = pooled.shape
        op_tokens = self.proj[str(stage)](pooled) + self.op_embed  # (B, E, O, d)
        it = self.tokens[cell, list(edges)]  # (E, d)
        it = it.unsqueeze(0).unsqueeze(2).expand(b, e, 1, self.dim)
        seq = torch.cat([it, op_tokens], dim=2).reshape(b * e, 1 + o, self.dim)
        z = self.norm(self.encoder(seq))
        q = self.query(z[:, 0])  # (BE, d)
        k = self.key(z[:, 1:])  # (BE, O, d)
        logits = torch.einsum("nod,nd->no", k, q) / math.sqrt(self.dim)
        return logits.softmax(dim=-1).view(b, e, o)


def darts_alphas(num_edges: int, num_ops: int) -> nn.Parameter:
    """DARTS's architecture parameters of one cell type: ``1e-3 * randn(edges, ops)``."""
    return nn.Parameter(1e-3 * torch.randn(num_edges, num_ops))
