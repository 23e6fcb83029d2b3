"""``NB201Space`` and ``DartsSpace``: the two cell spaces behind the SearchSpace contract.

One family (``cell``), one config class (:class:`CellSpaceConfig`); :func:`build_cell_space`
(the registry's build callable) picks the space by ``config.kind``. Both share the supernet
(:class:`CellSupernet`), the export builder (``network.build_cell_network``) and the selection
hooks; they differ in their arch type, flat encoding, operators and selection rule.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch

from search_spaces.base import Encoded, SearchSpace
from search_spaces.cell.arch import (
    DARTS_CELL_TYPES,
    DARTS_EDGE_LABELS,
    DARTS_NODES,
    NB201_EDGE_LABELS,
    NB201_EDGES,
    DartsArch,
    NB201Arch,
    darts_edge_index,
    from_genotype_text,
    from_nb201_string,
    to_genotype_text,
    to_nb201_string,
    validate_darts_arch,
    validate_nb201_arch,
)
from search_spaces.cell.config import CellSpaceConfig
from search_spaces.cell.cost import darts_cost, nb201_cost
from search_spaces.cell.evolution import (
    crossover_darts,
    crossover_nb201,
    mutate_darts,
    mutate_nb201,
    sample_darts,
    sample_nb201,
)
from search_spaces.cell.network import cell_network_kwargs
from search_spaces.cell.ops import DARTS_GENOTYPE_OPS, DARTS_OPS, NB201_OPS
from search_spaces.cell.supernet import CellSupernet

_BUILDER = "search_spaces.cell.network:build_cell_network"
#: NAS-Bench-201's training recipe of a fixed cell network (``standalone_recipe``)
STANDALONE_RECIPE: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.1,
    "min_lr": 0.0,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "warmup_epochs": 0.0,
    "label_smoothing": 0.0,
    "batch_size": 256,
}


class _CellSpace(SearchSpace):
    """What both cell spaces share: shapes, supernet, export, and the encoding helpers."""

    family = "cell"
    kind: str
    config: CellSpaceConfig

    def __init__(self, config: CellSpaceConfig) -> None:
        if not isinstance(config, CellSpaceConfig) or config.kind != self.kind:
            got = config.kind if isinstance(config, CellSpaceConfig) else type(config).__name__
            raise ValueError(
                f"{type(self).__name__} needs a CellSpaceConfig with kind={self.kind!r}, got "
                f"{got!r}; allowed: build_cell_space(config) picks the space by kind"
            )
        super().__init__(config)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_chans, c.img_size, c.img_size)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # ---- the methods every arch goes through --------------------------------------------------
    def mutate(self, arch: Any, rng: random.Random) -> Any:
        self.validate(arch)
        return self._mutate(arch, rng)

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Any:
        self.validate(a)
        self.validate(b)
        return self._crossover(a, b, rng)

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution  # lazy: see base.SearchSpace

        return {key: CategoricalDistribution(choices) for key, choices in self._choices().items()}

    def _check_keys(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        flat = {k: _plain_scalar(v) for k, v in flat.items()}
        keys = list(self._choices())
        unknown = [k for k in flat if k not in keys]
        missing = [k for k in keys if k not in flat]
        if unknown or missing:
            raise ValueError(
                f"encoded {self.kind} cell has unknown keys {unknown} and lacks keys {missing}; "
                f"expected exactly: {keys}"
            )
        for key, choices in self._choices().items():
            value = flat[key]
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"{key}={value!r} is not allowed; allowed: {list(choices)}")
        return flat

    def cost(self, arch: Any) -> dict[str, int]:
        """``params`` of the extracted network; ``flops`` = MACs per image (``cost.py``)."""
        self.validate(arch)
        return self._cost(arch)

    def build_supernet(self) -> CellSupernet:
        return CellSupernet(self.config)

    def export_spec(self, arch: Any) -> dict[str, Any]:
        self.validate(arch)
        return {"builder": _BUILDER, "kwargs": cell_network_kwargs(self.config, arch)}

    def standalone_recipe(self) -> dict[str, Any]:
        """NAS-Bench-201's recipe, as the `retrain` stage's defaults: SGD with Nesterov
        momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4, batch 256, no warm-up, no label
        smoothing."""
        return dict(STANDALONE_RECIPE)

    def parse(self, text: str) -> Any:
        """An arch from its text form (:meth:`describe`) or its canonical JSON."""
        if isinstance(text, str) and text.lstrip().startswith("{"):
            return self.from_json(text)
        arch = self._parse_text(text)
        self.validate(arch)
        return arch

    def selection_labels(self) -> dict[str, tuple[list[str], list[str]]]:
        """Per cell type: (edge labels ``"to<-from"``, op names), the rows and columns of
        ``CellSupernet.selection_scores``."""
        return {t: (list(self._edge_labels), list(self._ops)) for t in self._cell_types}

    def _matrices(self, scores: Mapping[str, Any]) -> dict[str, list[list[float]]]:
        """``scores`` as plain float matrices, after checking cell types and shapes."""
        if not isinstance(scores, Mapping):
            raise ValueError(
                f"scores must be a mapping of cell type to an (edges, ops) matrix, got "
                f"{type(scores).__name__}; allowed keys: {list(self._cell_types)}"
            )
        if set(scores) != set(self._cell_types):
            raise ValueError(
                f"scores has cell types {sorted(scores)}; allowed: exactly {list(self._cell_types)}"
            )
        shape = (len(self._edge_labels), len(self._ops))
        out = {}
        for t in self._cell_types:
            value = scores[t]
            try:
                if isinstance(value, torch.Tensor):
                    matrix = value.detach().to(device="cpu", dtype=torch.float64)
                else:
                    matrix = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(
                    f"scores[{t!r}] is not a numeric matrix ({exc}); allowed: {shape[0]} rows "
                    f"(edges) x {shape[1]} columns (ops)"
                ) from None
            if tuple(matrix.shape) != shape:
                raise ValueError(
                    f"scores[{t!r}] has shape {tuple(matrix.shape)}; allowed: {shape} (rows "
                    f"{list(self._edge_labels)}, columns {list(self._ops)})"
                )
            if not torch.isfinite(matrix).all():
                raise ValueError(f"scores[{t!r}] has non-finite values; allowed: finite numbers")
            out[t] = matrix.tolist()
        return out


class NB201Space(_CellSpace):
    """NAS-Bench-201: one 4-node cell (6 edges, 5 ops: 15,625 cells) repeated in every stage.

    The flat encoding has keys ``edge_0`` .. ``edge_5`` (NB201-string edge order), each the op
    name. Text form: the NB201 string (:meth:`describe`, :meth:`parse`).
    """

    kind = "nb201"
    arch_type = NB201Arch
    _ops = NB201_OPS
    _edge_labels = NB201_EDGE_LABELS
    _cell_types = ("cell",)

    def sample(self, rng: random.Random) -> NB201Arch:
        return sample_nb201(rng)

    def _mutate(self, arch: NB201Arch, rng: random.Random) -> NB201Arch:
        return mutate_nb201(arch, rng)

    def _crossover(self, a: NB201Arch, b: NB201Arch, rng: random.Random) -> NB201Arch:
        return crossover_nb201(a, b, rng)

    def smallest(self) -> NB201Arch:
        """Every edge ``none``: only the skeleton's parameters."""
        return NB201Arch(("none",) * len(NB201_EDGES))

    def largest(self) -> NB201Arch:
        """Every edge ``nor_conv_3x3``, the costliest op."""
        return NB201Arch(("nor_conv_3x3",) * len(NB201_EDGES))

    def _choices(self) -> dict[str, tuple[str, ...]]:
        return {f"edge_{e}": NB201_OPS for e in range(len(NB201_EDGES))}

    def encode(self, arch: NB201Arch) -> Encoded:
        self.validate(arch)
        return {f"edge_{e}": op for e, op in enumerate(arch.ops)}

    def decode(self, flat: Mapping[str, Any]) -> NB201Arch:
        flat = self._check_keys(flat)
        arch = NB201Arch(tuple(flat[f"edge_{e}"] for e in range(len(NB201_EDGES))))
        self.validate(arch)
        return arch

    def validate(self, arch: NB201Arch) -> None:
        validate_nb201_arch(arch)

    def _cost(self, arch: NB201Arch) -> dict[str, int]:
        return nb201_cost(self.config, arch)

    def latency_units(self, arch: NB201Arch) -> list[tuple[str, float]]:
        """Kernels of the extracted ``TinyNetwork`` (``network.py``) with their MACs per image
        (the terms of ``nb201_cost``'s flops, which they sum to): ``stem`` (conv 3x3 + BN);
        per cell of every stage, one unit per edge named by its op: ``nor_conv_3x3`` and
        ``nor_conv_1x1`` (ReLU, conv, BN; ``pixels x C^2 x kernel^2``), ``avg_pool_3x3`` and
        ``skip_connect`` (the identity, whose kernel is the addition into its node) sized by
        their elements, ``pixels x C``, and no unit for ``none`` (no module runs);
        ``reduction_block`` for each ResNet basic block between stages (its two 3x3 convs and
        the 1x1 shortcut); ``head`` (the classifier). The final BN + ReLU and global pooling
        are the same for every cell and left to the intercept."""
        self.validate(arch)
        c = self.config
        size, ch = c.img_size, c.channels
        units = [("stem", float(size * size * ch * c.in_chans * 9))]
        c_prev = ch
        for stage in range(3):
            cs = ch * 2**stage
            if stage:
                size //= 2
                hw = size * size
                block = hw * cs * c_prev * 9 + hw * cs * cs * 9 + hw * cs * c_prev
                units.append(("reduction_block", float(block)))
            hw = size * size
            for _ in range(c.cells_per_stage):
                units += [
                    (op, float(_nb201_op_size(op, cs, hw))) for op in arch.ops if op != "none"
                ]
            c_prev = cs
        return units + [("head", float(c_prev * c.num_classes))]

    def describe(self, arch: NB201Arch) -> str:
        """The NB201 string, e.g. ``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|...|``."""
        return to_nb201_string(arch)

    def _parse_text(self, text: str) -> NB201Arch:
        return from_nb201_string(text)

    def select(self, scores: Mapping[str, Any]) -> NB201Arch:
        """Per edge the op of highest importance, all 5 ops (``none`` included) competing;
        ties go to the op listed first in :data:`NB201_OPS`."""
        matrix = self._matrices(scores)["cell"]
        return NB201Arch(tuple(NB201_OPS[_argmax(row)] for row in matrix))

    def tabular_benchmark(self) -> Any:
        """NAS-Bench-201's CIFAR-10 table (PyPI ``analog-nasbench``, ``table.py``): the known
        test accuracy of each cell after 200 epochs in the benchmark's own network (C=16, N=5,
        32x32). It is a property of the CELL, so every NB201 preset returns it (for other
        skeletons or data it is a transfer-proxy reading, DESIGN.md section 4.4). Raises
        ``table.NB201TableError`` with the install command when the package is missing."""
        from search_spaces.cell.table import load_nb201_table  # lazy: reads a 5.6 MB pickle

        return NB201TableView(self, load_nb201_table())


class NB201TableView:
    """The NB201 table seen through an :class:`NB201Space`: ``accuracy(arch)`` and
    ``percentile(arch)`` take (and validate) ``NB201Arch`` values; the table itself is
    ``.table`` (``table.NB201Table``: ``rank``, ``best``, ``quantile``, ...)."""

    def __init__(self, space: NB201Space, table: Any) -> None:
        self.space = space
        self.table = table
        self.name: str = table.name
        self.metric: str = table.metric

    def __repr__(self) -> str:
        return f"NB201TableView({self.table!r})"

    def accuracy(self, arch: NB201Arch) -> float:
        """The table's accuracy (%) of ``arch``."""
        self.space.validate(arch)
        return float(self.table.accuracy(arch))

    def percentile(self, arch: NB201Arch) -> float:
        """Percent of the table's cells scoring strictly below ``arch``."""
        self.space.validate(arch)
        return float(self.table.percentile(arch))

    def rank(self, arch: NB201Arch) -> int:
        """1 + the number of cells scoring strictly above ``arch``."""
        self.space.validate(arch)
        return int(self.table.rank(arch))


class DartsSpace(_CellSpace):
    """The DARTS space: a normal and a reduction cell, each 4 nodes with 2 ``(op, input)``.

    The flat encoding has, per cell type ``t`` and node ``k`` in 2..5, the keys
    ``t_node<k>_inputs`` (the node's two inputs, e.g. ``"0,2"``, smaller first: every choice is
    a valid pair, so a sampler that draws keys independently never proposes a node with a
    repeated input) and ``t_node<k>_op0`` / ``t_node<k>_op1`` (the ops on the first and the
    second input). Text form: DARTS genotype text (:meth:`describe`, :meth:`parse`).
    """

    kind = "darts"
    arch_type = DartsArch
    _ops = DARTS_OPS
    _edge_labels = DARTS_EDGE_LABELS
    _cell_types = DARTS_CELL_TYPES

    def sample(self, rng: random.Random) -> DartsArch:
        return sample_darts(rng)

    def _mutate(self, arch: DartsArch, rng: random.Random) -> DartsArch:
        return mutate_darts(arch, rng)

    def _crossover(self, a: DartsArch, b: DartsArch, rng: random.Random) -> DartsArch:
        return crossover_darts(a, b, rng)

    def _uniform(self, op: str) -> DartsArch:
        gene = tuple((op, src) for _ in DARTS_NODES for src in (0, 1))
        return DartsArch(normal=gene, reduce=gene)

    def smallest(self) -> DartsArch:
        """Every pair ``max_pool_3x3`` (no parameters, no MACs) from the cell inputs. Inputs do
        not change the cost of a pooling op; a stride-2 ``skip_connect`` would (it is a
        FactorizedReduce), so pooling is the minimum on every edge."""
        return self._uniform("max_pool_3x3")

    def largest(self) -> DartsArch:
        """Every pair ``sep_conv_5x5``, the op with the most parameters and MACs on any edge
        (its cost does not depend on the input: a strided one runs at the output size)."""
        return self._uniform("sep_conv_5x5")

    def _choices(self) -> dict[str, tuple[str, ...]]:
        choices: dict[str, tuple[str, ...]] = {}
        for t in DARTS_CELL_TYPES:
            for node in DARTS_NODES:
                choices[f"{t}_node{node}_inputs"] = tuple(
                    f"{i},{j}" for i in range(node) for j in range(i + 1, node)
                )
                choices[f"{t}_node{node}_op0"] = DARTS_GENOTYPE_OPS
                choices[f"{t}_node{node}_op1"] = DARTS_GENOTYPE_OPS
        return choices

    def encode(self, arch: DartsArch) -> Encoded:
        self.validate(arch)
        flat: Encoded = {}
        for t in DARTS_CELL_TYPES:
            gene = getattr(arch, t)
            for i, node in enumerate(DARTS_NODES):
                (op0, in0), (op1, in1) = gene[2 * i], gene[2 * i + 1]
                flat[f"{t}_node{node}_inputs"] = f"{in0},{in1}"
                flat[f"{t}_node{node}_op0"] = op0
                flat[f"{t}_node{node}_op1"] = op1
        return flat

    def decode(self, flat: Mapping[str, Any]) -> DartsArch:
        flat = self._check_keys(flat)
        genes = {}
        for t in DARTS_CELL_TYPES:
            pairs: list[tuple[str, int]] = []
            for node in DARTS_NODES:
                in0, in1 = (int(s) for s in flat[f"{t}_node{node}_inputs"].split(","))
                pairs += [(flat[f"{t}_node{node}_op0"], in0), (flat[f"{t}_node{node}_op1"], in1)]
            genes[t] = tuple(pairs)
        arch = DartsArch(**genes)
        self.validate(arch)
        return arch

    def validate(self, arch: DartsArch) -> None:
        validate_darts_arch(arch)

    def _cost(self, arch: DartsArch) -> dict[str, int]:
        return darts_cost(self.config, arch)

    def latency_units(self, arch: DartsArch) -> list[tuple[str, float]]:
        """Kernels of the extracted DARTS network (``network.py``) with their MACs per image
        (the terms of ``darts_cost``'s flops, which they sum to): ``stem`` (conv 3x3 + BN);
        per cell, its two input preprocessings, ``preprocess`` (ReLU, conv 1x1, BN:
        ``pixels x C_in x C``) or, for the first input of a cell after a reduction cell,
        ``factorized_reduce`` (two strided 1x1 convs, same MACs), then one unit per
        ``(op, input)`` pair of its gene, named by its op: ``sep_conv_*`` (two depthwise +
        pointwise stacks: ``2 x pixels x (C x kernel^2 + C^2)``) and ``dil_conv_*`` (one:
        ``pixels x (C x kernel^2 + C^2)``), at the output resolution; ``max_pool_3x3``,
        ``avg_pool_3x3`` and the identity ``skip_connect`` sized by their output elements,
        ``pixels x C``; a strided ``skip_connect`` (reduction cell, from a cell input) runs as
        a FactorizedReduce and is a ``factorized_reduce`` unit of ``pixels x C^2`` MACs.
        ``head`` is the classifier. The cells' concatenations and the global pooling are left
        to the intercept."""
        self.validate(arch)
        cfg = self.config
        c_stem = cfg.stem_multiplier * cfg.channels
        size = cfg.img_size
        units = [("stem", float(size * size * c_stem * cfg.in_chans * 9))]
        c_prev_prev, c_prev, c = c_stem, c_stem, cfg.channels
        reduction_prev = False
        for i in range(cfg.layers):
            reduction = i in cfg.reduction_layers
            if reduction:
                c *= 2
            hw_in = size * size
            first = "factorized_reduce" if reduction_prev else "preprocess"
            units += [
                (first, float(hw_in * c_prev_prev * c)),
                ("preprocess", float(hw_in * c_prev * c)),
            ]
            if reduction:
                size //= 2
            hw_out = size * size
            for op, src in arch.reduce if reduction else arch.normal:
                units.append(_darts_op_unit(op, c, hw_out, strided=reduction and src < 2))
            c_prev_prev, c_prev = c_prev, len(DARTS_NODES) * c
            reduction_prev = reduction
        return units + [("head", float(c_prev * cfg.num_classes))]

    def describe(self, arch: DartsArch) -> str:
        """DARTS genotype text: ``Genotype(normal=[('sep_conv_3x3', 0), ...], ...)``."""
        return to_genotype_text(arch)

    def _parse_text(self, text: str) -> DartsArch:
        return from_genotype_text(text)

    def select(self, scores: Mapping[str, Any]) -> DartsArch:
        """DARTS's genotype rule (``model_search.py`` ``genotype()``), per cell type: for each
        node, keep the 2 incoming edges whose best non-``none`` importance is highest (ties: the
        earlier input), and on each its best non-``none`` op (ties: the op listed first)."""
        matrices = self._matrices(scores)
        none = DARTS_OPS.index("none")
        genes = {}
        for t in DARTS_CELL_TYPES:
            matrix = matrices[t]
            pairs: list[tuple[str, int]] = []
            for node in DARTS_NODES:
                best = {}
                for src in range(node):
                    row = matrix[darts_edge_index(node, src)]
                    candidates = [o for o in range(len(DARTS_OPS)) if o != none]
                    top = max(candidates, key=lambda o, row=row: (row[o], -o))
                    best[src] = (row[top], top)
                kept = sorted(range(node), key=lambda s, best=best: (-best[s][0], s))[:2]
                pairs += [(DARTS_OPS[best[s][1]], s) for s in kept]
            genes[t] = tuple(pairs)
        return DartsArch(**genes)


def build_cell_space(config: CellSpaceConfig) -> NB201Space | DartsSpace:
    """The registry's build callable: the space of ``config.kind``."""
    if not isinstance(config, CellSpaceConfig):
        raise ValueError(f"config must be a CellSpaceConfig, got {type(config).__name__}")
    return NB201Space(config) if config.kind == "nb201" else DartsSpace(config)


_KERNEL = {
    "nor_conv_1x1": 1,
    "nor_conv_3x3": 3,
    "sep_conv_3x3": 3,
    "sep_conv_5x5": 5,
    "dil_conv_3x3": 3,
    "dil_conv_5x5": 5,
}
"""Kernel size of each conv op of both cell spaces (latency-unit sizes)."""


def _nb201_op_size(op: str, channels: int, pixels: int) -> int:
    """Latency-unit size of NB201 op ``op`` in a cell: MACs of a conv, else elements."""
    kernel = _KERNEL.get(op)
    if kernel is None:  # avg_pool_3x3, skip_connect
        return pixels * channels
    return pixels * channels * channels * kernel * kernel


def _darts_op_unit(op: str, channels: int, pixels: int, strided: bool) -> tuple[str, float]:
    """Latency unit of one DARTS op with ``channels`` channels and ``pixels`` output pixels."""
    c = channels
    if op == "skip_connect" and strided:
        return ("factorized_reduce", float(pixels * c * c))
    if op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect"):
        return (op, float(pixels * c))
    stack = pixels * (c * _KERNEL[op] ** 2 + c * c)  # depthwise + pointwise
    return (op, float(2 * stack if op.startswith("sep_conv") else stack))


def _argmax(row: list[float]) -> int:
    """Index of the first maximum."""
    return max(range(len(row)), key=lambda i: (row[i], -i))


def _plain_scalar(value: Any) -> Any:
    """numpy scalars (an archive read back from parquet) as the Python value they hold."""
    if not isinstance(value, (bool, int, float, str)) and hasattr(value, "item"):
        return value.item()
    return value


__all__ = ["DartsSpace", "NB201Space", "NB201TableView", "build_cell_space"]
