"""Discrete cells of the two spaces, their text forms, and their validation.

* :class:`NB201Arch`: one op per edge of NAS-Bench-201's 4-node cell, edges in NB201-string
  order ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``. Text form: the NB201 string
  ``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|``;
  integer form: :func:`to_index` (documented there).
* :class:`DartsArch`: a DARTS ``Genotype``: a normal and a reduction cell, each 8 ``(op,
  input)`` pairs, two per intermediate node. States ``0`` and ``1`` are the cell's inputs (the
  outputs of the two previous cells), ``2..5`` its intermediate nodes; node ``k`` (pairs
  ``2(k-2)`` and ``2(k-2)+1``) reads two DISTINCT states ``< k``; the cell's output is the
  concatenation of nodes 2..5. Text form: the genotype as DARTS's ``genotypes.py`` prints it.

Both are frozen dataclasses of strings, ints and tuples: hashable, comparable, JSON-ready.
A DARTS node's two pairs are kept in one canonical order (the smaller input first), applied on
construction, so the same cell has one representation (and one arch id) however it was
written down.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any

from search_spaces.cell.ops import DARTS_GENOTYPE_OPS, NB201_OPS

# ---- NAS-Bench-201 -----------------------------------------------------------------------------

NB201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
"""(to, from) of each edge, in NB201-string order; node 0 is the cell input, node 3 its output."""

NB201_EDGE_LABELS: tuple[str, ...] = tuple(f"{to}<-{src}" for to, src in NB201_EDGES)

NB201_NUM_CELLS = len(NB201_OPS) ** len(NB201_EDGES)  # 15,625


@dataclasses.dataclass(frozen=True)
class NB201Arch:
    """A NAS-Bench-201 cell: ``ops[e]`` is the op on edge ``NB201_EDGES[e]`` (NB201-string
    order). All 5 ops are allowed on every edge, ``none`` included (a cell whose output is
    cut off from its input is valid: the benchmark trains it too, to chance accuracy)."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.ops, list):
            object.__setattr__(self, "ops", tuple(self.ops))


def validate_nb201_arch(arch: Any) -> None:
    """Raise ``ValueError`` naming the first offending field of ``arch`` and the allowed values."""
    if not isinstance(arch, NB201Arch):
        raise ValueError(f"arch must be an NB201Arch, got {type(arch).__name__}")
    ops = arch.ops
    if not isinstance(ops, tuple) or len(ops) != len(NB201_EDGES):
        shown = len(ops) if isinstance(ops, tuple) else type(ops).__name__
        raise ValueError(
            f"ops must have one op per edge ({', '.join(NB201_EDGE_LABELS)}): got {shown}; "
            f"allowed: a tuple of {len(NB201_EDGES)} op names"
        )
    for e, op in enumerate(ops):
        if not isinstance(op, str) or op not in NB201_OPS:
            raise ValueError(
                f"ops[{e}] (edge {NB201_EDGE_LABELS[e]}) is {op!r}; allowed: {list(NB201_OPS)}"
            )


def to_nb201_string(arch: NB201Arch) -> str:
    """The NB201 string of a cell: nodes 1..3 separated by ``+``, each ``|op~input|`` per
    incoming edge (AutoDL ``Structure.tostr``)."""
    validate_nb201_arch(arch)
    nodes = []
    for target in (1, 2, 3):
        parts = [
            f"{op}~{src}"
            for (to, src), op in zip(NB201_EDGES, arch.ops, strict=True)
            if to == target
        ]
        nodes.append("|" + "|".join(parts) + "|")
    return "+".join(nodes)


def from_nb201_string(text: str) -> NB201Arch:
    """Parse an NB201 string; ``ValueError`` names what is malformed and what is allowed."""
    example = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"
    if not isinstance(text, str):
        raise ValueError(f"an NB201 string must be a str, got {type(text).__name__}")
    nodes = text.strip().split("+")
    if len(nodes) != 3:
        raise ValueError(
            f"NB201 string {text!r} has {len(nodes)} node(s); allowed: 3 nodes separated by '+', "
            f"e.g. {example}"
        )
    ops: list[str] = []
    for target, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise ValueError(
                f"node {target} of NB201 string {text!r} is {node!r}; allowed: '|op~input|...|'"
            )
        parts = node[1:-1].split("|")
        if len(parts) != target:
            raise ValueError(
                f"node {target} of NB201 string {text!r} has {len(parts)} edge(s); allowed: "
                f"exactly {target} (one from each node < {target})"
            )
        for src, part in enumerate(parts):
            op, sep, given = part.rpartition("~")
            if not sep or given != str(src):
                raise ValueError(
                    f"edge {target}<-{src} of NB201 string {text!r} is {part!r}; allowed: "
                    f"'op~{src}' (inputs in increasing order)"
                )
            if op not in NB201_OPS:
                raise ValueError(
                    f"edge {target}<-{src} of NB201 string {text!r} has op {op!r}; allowed: "
                    f"{list(NB201_OPS)}"
                )
            ops.append(op)
    return NB201Arch(tuple(ops))


def to_index(arch: NB201Arch) -> int:
    """The cell's index in ``0 .. 15624``: its ops as base-5 digits, AutoDL's op order
    (none 0, skip_connect 1, nor_conv_1x1 2, nor_conv_3x3 3, avg_pool_3x3 4), edges in
    NB201-string order with the first edge (``1<-0``) the most significant digit.

    This is OUR enumeration, stable and documented. The official NB201 ``.pth`` file numbers
    its cells in another order, which is not available here (the file cannot be downloaded on
    these machines), so this index does not address that file. The analog-nasbench table uses
    NASLib tuples (``search_spaces.cell.table.naslib_tuple``).
    """
    validate_nb201_arch(arch)
    index = 0
    for op in arch.ops:
        index = index * len(NB201_OPS) + NB201_OPS.index(op)
    return index


def from_index(index: int) -> NB201Arch:
    """Inverse of :func:`to_index`."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NB201_NUM_CELLS:
        raise ValueError(
            f"NB201 cell index {index!r} is not allowed; allowed: an int in "
            f"0..{NB201_NUM_CELLS - 1}"
        )
    base = len(NB201_OPS)
    digits = [(index // base**p) % base for p in reversed(range(len(NB201_EDGES)))]
    return NB201Arch(tuple(NB201_OPS[d] for d in digits))


# ---- DARTS -------------------------------------------------------------------------------------

DARTS_CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
DARTS_STEPS = 4
"""Intermediate nodes per cell (states 2..5)."""
DARTS_PAIRS = 2 * DARTS_STEPS
DARTS_NODES: tuple[int, ...] = tuple(range(2, 2 + DARTS_STEPS))

DARTS_EDGES: tuple[tuple[int, int], ...] = tuple((k, j) for k in DARTS_NODES for j in range(k))
"""(to, from) of the 14 edges of a DARTS cell in DARTS's order: node 2 from 0, 1; node 3 from
0, 1, 2; ... (the rows of DARTS's ``alphas_normal``/``alphas_reduce``)."""

DARTS_EDGE_LABELS: tuple[str, ...] = tuple(f"{to}<-{src}" for to, src in DARTS_EDGES)

Gene = tuple[tuple[str, int], ...]


def darts_edge_index(node: int, src: int) -> int:
    """Row of edge ``src -> node`` in :data:`DARTS_EDGES` (``node`` in 2..5, ``src < node``)."""
    return (node - 1) * node // 2 - 1 + src


@dataclasses.dataclass(frozen=True)
class DartsArch:
    """A DARTS genotype: ``normal`` and ``reduce`` are 8 ``(op, input)`` pairs each, pairs
    ``2i, 2i+1`` feeding node ``i + 2``, with DARTS ``Genotype`` semantics (see the module
    docstring). Lists become tuples and each node's two pairs are put in canonical order (the
    smaller input first) on construction; anything else is left for :func:`validate_darts_arch`
    to report."""

    normal: Gene
    reduce: Gene

    def __post_init__(self) -> None:
        for name in DARTS_CELL_TYPES:
            object.__setattr__(self, name, _canonical_gene(getattr(self, name)))


def _canonical_gene(gene: Any) -> Any:
    if not isinstance(gene, (tuple, list)):
        return gene
    pairs = tuple(tuple(p) if isinstance(p, list) else p for p in gene)
    if len(pairs) != DARTS_PAIRS:
        return pairs
    out: list[Any] = []
    for i in range(0, DARTS_PAIRS, 2):
        a, b = pairs[i], pairs[i + 1]
        if _input_of(b) is not None and _input_of(a) is not None and _input_of(b) < _input_of(a):
            a, b = b, a
        out += [a, b]
    return tuple(out)


def _input_of(pair: Any) -> int | None:
    if isinstance(pair, tuple) and len(pair) == 2:
        value = pair[1]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def validate_darts_arch(arch: Any) -> None:
    """Raise ``ValueError`` naming the first offending field (``normal[3]``, ...) of ``arch``."""
    if not isinstance(arch, DartsArch):
        raise ValueError(f"arch must be a DartsArch, got {type(arch).__name__}")
    for name in DARTS_CELL_TYPES:
        gene = getattr(arch, name)
        if not isinstance(gene, tuple) or len(gene) != DARTS_PAIRS:
            shown = len(gene) if isinstance(gene, tuple) else type(gene).__name__
            raise ValueError(
                f"{name} must have {DARTS_PAIRS} (op, input) pairs, two per node: got {shown}; "
                f"allowed: a tuple of {DARTS_PAIRS} pairs"
            )
        for p, pair in enumerate(gene):
            node = DARTS_NODES[p // 2]
            field = f"{name}[{p}]"
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(
                    f"{field} is {pair!r}; allowed: an (op, input) pair, e.g. ('sep_conv_3x3', 0)"
                )
            op, src = pair
            if not isinstance(op, str) or op not in DARTS_GENOTYPE_OPS:
                raise ValueError(
                    f"{field} (node {node}) has op {op!r}; allowed: {list(DARTS_GENOTYPE_OPS)}"
                )
            if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < node:
                raise ValueError(
                    f"{field} (node {node}) has input {src!r}; allowed: an int in 0..{node - 1}"
                )
            if p % 2 == 1 and src == gene[p - 1][1]:
                raise ValueError(
                    f"{field} repeats input {src} of {name}[{p - 1}] (node {node}); allowed: two "
                    "distinct inputs per node"
                )


def to_genotype_text(arch: DartsArch) -> str:
    """The genotype as DARTS prints it: ``Genotype(normal=[('sep_conv_3x3', 0), ...],
    normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6))``."""
    validate_darts_arch(arch)
    concat = f"range(2, {2 + DARTS_STEPS})"

    def gene(g: Gene) -> str:
        return "[" + ", ".join(f"({op!r}, {src})" for op, src in g) + "]"

    return (
        f"Genotype(normal={gene(arch.normal)}, normal_concat={concat}, "
        f"reduce={gene(arch.reduce)}, reduce_concat={concat})"
    )


_GENOTYPE = re.compile(
    r"^\s*Genotype\(\s*normal\s*=\s*(?P<normal>\[.*?\])\s*,"
    r"\s*normal_concat\s*=\s*(?P<nc>[^=]*?)\s*,"
    r"\s*reduce\s*=\s*(?P<reduce>\[.*?\])\s*,\s*reduce_concat\s*=\s*(?P<rc>[^=]*?)\s*\)\s*$",
    re.DOTALL,
)
_CONCATS = {"range(2, 6)", "range(2,6)", "[2, 3, 4, 5]", "[2,3,4,5]", "(2, 3, 4, 5)"}


def from_genotype_text(text: str) -> DartsArch:
    """Parse DARTS genotype text (lists read with :func:`ast.literal_eval`, never ``eval``).

    Both concats must be nodes 2..5 (``range(2, 6)``): the search network concatenates every
    intermediate node. Each node's pairs are put in canonical order (the smaller input first).
    """
    if not isinstance(text, str):
        raise ValueError(f"a DARTS genotype must be a str, got {type(text).__name__}")
    match = _GENOTYPE.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not DARTS genotype text; allowed: \"Genotype(normal=[('sep_conv_3x3', "
            '0), ...], normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6))"'
        )
    for key in ("nc", "rc"):
        if match[key].strip() not in _CONCATS:
            name = "normal_concat" if key == "nc" else "reduce_concat"
            raise ValueError(
                f"{name}={match[key].strip()!r} is not allowed; allowed: range(2, 6) (the cell "
                "concatenates all four intermediate nodes)"
            )
    genes = {}
    for name in DARTS_CELL_TYPES:
        try:
            value = ast.literal_eval(match[name])
        except (ValueError, SyntaxError) as exc:
            raise ValueError(
                f"{name} of DARTS genotype {text!r} does not parse: {exc}; allowed: a list of "
                "(op, input) pairs"
            ) from None
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list of (op, input) pairs, got {value!r}")
        genes[name] = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in value)
    arch = DartsArch(normal=genes["normal"], reduce=genes["reduce"])
    validate_darts_arch(arch)
    return arch
