"""Sampling, mutation and crossover of cells (regularised-evolution style operators).

Pure functions of the parent arch(s) and a :class:`random.Random`; they draw from no other
source of randomness, so a seeded generator reproduces a whole evolutionary search. Every
result is a valid arch when the parents are.
"""

from __future__ import annotations

import random

from search_spaces.cell.arch import (
    DARTS_CELL_TYPES,
    DARTS_NODES,
    NB201_EDGES,
    DartsArch,
    Gene,
    NB201Arch,
)
from search_spaces.cell.ops import DARTS_GENOTYPE_OPS, NB201_OPS

# ---- NAS-Bench-201 -----------------------------------------------------------------------------


def sample_nb201(rng: random.Random) -> NB201Arch:
    """Uniform over the 5^6 cells: each edge's op drawn independently."""
    return NB201Arch(tuple(rng.choice(NB201_OPS) for _ in NB201_EDGES))


def mutate_nb201(arch: NB201Arch, rng: random.Random) -> NB201Arch:
    """One edge gets a different op (NB201's regularised-evolution mutation): the child always
    differs from the parent."""
    ops = list(arch.ops)
    e = rng.randrange(len(ops))
    ops[e] = rng.choice([op for op in NB201_OPS if op != ops[e]])
    return NB201Arch(tuple(ops))


def crossover_nb201(a: NB201Arch, b: NB201Arch, rng: random.Random) -> NB201Arch:
    """Per-edge uniform crossover."""
    return NB201Arch(
        tuple(x if rng.random() < 0.5 else y for x, y in zip(a.ops, b.ops, strict=True))
    )


# ---- DARTS -------------------------------------------------------------------------------------


def _sample_gene(rng: random.Random) -> Gene:
    pairs: list[tuple[str, int]] = []
    for node in DARTS_NODES:
        for src in sorted(rng.sample(range(node), 2)):
            pairs.append((rng.choice(DARTS_GENOTYPE_OPS), src))
    return tuple(pairs)


def sample_darts(rng: random.Random) -> DartsArch:
    """Uniform over genotypes: per node two distinct inputs, then an op for each (no ``none``)."""
    return DartsArch(normal=_sample_gene(rng), reduce=_sample_gene(rng))


def mutate_darts(arch: DartsArch, rng: random.Random) -> DartsArch:
    """One pair of one cell changes: with probability 1/2 its op becomes another op, otherwise
    its input becomes another state not already feeding that node (the op changes instead when
    no such state exists, as for node 2). The child always differs from the parent."""
    name = rng.choice(DARTS_CELL_TYPES)
    gene = list(getattr(arch, name))
    p = rng.randrange(len(gene))
    node = DARTS_NODES[p // 2]
    op, src = gene[p]
    used = {gene[p][1], gene[p ^ 1][1]}
    free = [s for s in range(node) if s not in used]
    if free and rng.random() < 0.5:
        gene[p] = (op, rng.choice(free))
    else:
        gene[p] = (rng.choice([o for o in DARTS_GENOTYPE_OPS if o != op]), src)
    return DartsArch(**{**{t: getattr(arch, t) for t in DARTS_CELL_TYPES}, name: tuple(gene)})


def crossover_darts(a: DartsArch, b: DartsArch, rng: random.Random) -> DartsArch:
    """Per-node uniform crossover: each node of each cell takes both its pairs from one parent
    (so its two inputs stay distinct)."""
    genes = {}
    for name in DARTS_CELL_TYPES:
        ga, gb = getattr(a, name), getattr(b, name)
        pairs: list[tuple[str, int]] = []
        for i in range(len(DARTS_NODES)):
            source = ga if rng.random() < 0.5 else gb
            pairs += source[2 * i : 2 * i + 2]
        genes[name] = tuple(pairs)
    return DartsArch(**genes)
