"""The NAS-Bench-201 CIFAR-10 table that PyPI's ``analog-nasbench==0.1.3`` ships.

The package (AnalogNAS-Bench, IBM) holds one record per NB201 cell, all 15,625, with a single
test number per metric (no validation split): ``baseline_accuracy`` is 200-epoch full-precision
training, one seed. Numbers are on that table's own scale (optimum 94.0664), not NB201's.

The package itself is never imported: its ``data.py`` imports ``pkg_resources`` (gone in
setuptools >= 81) and pandas. The data file is found with :func:`importlib.util.find_spec`,
which does not execute a top-level package, and read with an allow-list unpickler that maps the
two record classes to inert stand-ins and refuses every other global.

Our cell is a 6-tuple of op names in NB201-string edge order
(``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``). The table's key is a NASLib tuple: op indices
(0 skip_connect, 1 none, 2 nor_conv_3x3, 3 nor_conv_1x1, 4 avg_pool_3x3) on edges
``0->1, 0->2, 0->3, 1->2, 1->3, 2->3``, so string positions 2 and 3 are swapped.
:func:`naslib_tuple` and :func:`ops_from_naslib` are the only place the two meet.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import itertools
import math
import operator
import os
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

PACKAGE = "analognasbench"
DISTRIBUTION = "analog-nasbench"
VERSION = "0.1.3"
DATA_FILE = "data.anb"
INSTALL_HINT = f"pip install {DISTRIBUTION}=={VERSION}"

OP_NAMES: tuple[str, ...] = (
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
)
"""NB201 op names, in NB201's own order."""

EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
"""(to, from) of each position of our 6-tuple: the NB201 string order. Node 0 is the cell
input, node 3 its output."""

NASLIB_OP_NAMES: tuple[str, ...] = (
    "skip_connect",
    "none",
    "nor_conv_3x3",
    "nor_conv_1x1",
    "avg_pool_3x3",
)
"""Op name of each index of a NASLib tuple (NASLib ``OP_NAMES``)."""

NASLIB_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
"""(from, to) of each position of a NASLib tuple (NASLib ``EDGE_LIST``, renumbered from 0)."""

NUM_EDGES = len(EDGES)
NUM_CELLS = len(OP_NAMES) ** NUM_EDGES  # 15,625

ACCURACY_METRICS: tuple[str, ...] = (
    "baseline_accuracy",
    "ptq_accuracy",
    "qat_accuracy",
    "noisy_accuracy",
    "analog_accuracy",
)
DRIFT_METRICS: tuple[str, ...] = tuple(
    f"{kind}_drift_{seconds}"
    for kind in ("baseline", "analog")
    for seconds in (60, 3600, 86400, 2592000)
)
METRICS: tuple[str, ...] = ACCURACY_METRICS + DRIFT_METRICS
"""Metric names of the 0.1.3 pickle (the GitHub README's ``params``/``noisy_drift_*`` are not in
it). A drift metric is the accuracy (%) after that many seconds of drift; the table's
uncertainty of it is not kept."""

# Position p of a NASLib tuple holds the edge at position _NASLIB_TO_OURS[p] of ours.
_NASLIB_TO_OURS: tuple[int, ...] = tuple(EDGES.index((to, src)) for src, to in NASLIB_EDGES)
_NASLIB_INDEX = {name: i for i, name in enumerate(NASLIB_OP_NAMES)}
_ALLOWED = ", ".join(OP_NAMES)


class NB201TableError(RuntimeError):
    """The table cannot be found or is not the expected analog-nasbench 0.1.3 pickle."""


# ---- conversions (the one place NASLib tuples meet op names) -------------------------------------
def _as_ops(arch: Any) -> tuple[str, ...]:
    """Validated 6-tuple of op names from a tuple/list of names or an object with ``.ops``."""
    ops = getattr(arch, "ops", arch)
    if isinstance(ops, (str, bytes)) or not isinstance(ops, (tuple, list)):
        raise ValueError(
            f"a cell is a tuple or list of {NUM_EDGES} op names (or has .ops), got "
            f"{type(ops).__name__}; allowed names: {_ALLOWED}"
        )
    if len(ops) != NUM_EDGES:
        raise ValueError(
            f"a cell has {NUM_EDGES} edges (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), got {len(ops)} ops"
        )
    for pos, op in enumerate(ops):
        if not isinstance(op, str) or op not in OP_NAMES:
            to, src = EDGES[pos]
            raise ValueError(
                f"op at position {pos} (edge {to}<-{src}) is {op!r}; allowed: {_ALLOWED}"
            )
    return tuple(ops)


def naslib_tuple(ops: Any) -> tuple[int, ...]:
    """The table's key (NASLib op indices in NASLib edge order) of a cell of op names."""
    names = _as_ops(ops)
    return tuple(_NASLIB_INDEX[names[_NASLIB_TO_OURS[p]]] for p in range(NUM_EDGES))


def ops_from_naslib(key: Sequence[int]) -> tuple[str, ...]:
    """The cell (op names, NB201-string edge order) of a NASLib tuple; inverse of
    :func:`naslib_tuple`."""
    if isinstance(key, (str, bytes)) or len(key) != NUM_EDGES:
        raise ValueError(f"a NASLib tuple has {NUM_EDGES} op indices, got {key!r}")
    indices = []
    for p, value in enumerate(key):
        try:
            index = operator.index(value)
        except TypeError:
            index = -1
        if isinstance(value, bool) or not 0 <= index < len(NASLIB_OP_NAMES):
            raise ValueError(
                f"NASLib op index at position {p} is {value!r}; allowed: 0..4 "
                f"({', '.join(f'{i} {n}' for i, n in enumerate(NASLIB_OP_NAMES))})"
            )
        indices.append(index)
    ours = [""] * NUM_EDGES
    for p, index in enumerate(indices):
        ours[_NASLIB_TO_OURS[p]] = NASLIB_OP_NAMES[index]
    return tuple(ours)


def _row(key: Sequence[int]) -> int:
    """Row of a NASLib tuple in the table's arrays: base-5 digits, so rows follow tuple order."""
    row = 0
    for index in key:
        row = row * len(NASLIB_OP_NAMES) + index
    return row


def is_connected(ops: Any) -> bool:
    """Whether a path of non-``none`` edges leads from the cell input (node 0) to its output
    (node 3). A disconnected cell outputs zeros: chance accuracy, 10.00 in the table."""
    names = _as_ops(ops)
    reached = {0}
    for (to, src), op in zip(EDGES, names, strict=True):  # sources precede targets in this order
        if op != "none" and src in reached:
            reached.add(to)
    return 3 in reached


# ---- reading the pickle --------------------------------------------------------------------------
class _Record:
    """Inert stand-in for a record class of the pickle: only holds the attributes it is given."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError(
                f"{type(self).__name__} state must be a dict with str keys, got {type(state).__name__}"
            )
        self.__dict__.update(state)


class _Architecture(_Record):
    """Stands in for ``analognasbench.data.Architecture``."""


class _DriftMeasurement(_Record):
    """Stands in for ``analognasbench.data.DriftMeasurement`` (``value``, ``uncertainty``)."""


_ALLOWED_GLOBALS: dict[tuple[str, str], type] = {
    (f"{PACKAGE}.data", "Architecture"): _Architecture,
    (f"{PACKAGE}.data", "DriftMeasurement"): _DriftMeasurement,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in the {DISTRIBUTION} table; allowed: "
                f"{', '.join(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)}"
            ) from None


def unpickle_records(file: io.BufferedIOBase | bytes) -> Any:
    """Unpickle ``file`` (a binary file or bytes) admitting only the two record classes of
    analog-nasbench, as inert stand-ins; any other global raises ``pickle.UnpicklingError``."""
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    return _RestrictedUnpickler(file).load()


def data_path() -> str:
    """Path of the installed ``analognasbench/data.anb``, found without importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise NB201TableError(
            f"the NAS-Bench-201 table needs the package {PACKAGE} (PyPI {DISTRIBUTION}), which is "
            f"not installed; run: {INSTALL_HINT}"
        )
    for location in locations:
        path = os.path.join(location, DATA_FILE)
        if os.path.isfile(path):
            return path
    raise NB201TableError(
        f"the package {PACKAGE} has no {DATA_FILE} in {', '.join(locations)}; reinstall it: "
        f"{INSTALL_HINT}"
    )


def _metric_value(record: Any, metric: str, key: Any) -> float:
    value = getattr(record, metric, None)
    if isinstance(value, _DriftMeasurement):
        value = getattr(value, "value", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NB201TableError(
            f"{metric} of cell {key} is {value!r}, not a finite number; the table is not the "
            f"{DISTRIBUTION} {VERSION} one ({INSTALL_HINT})"
        )
    return float(value)


@functools.lru_cache(maxsize=1)
def _read_columns() -> dict[str, np.ndarray]:
    """Every metric of the installed table as a read-only float array, row :func:`_row` of the
    NASLib key (read once per process)."""
    path = data_path()
    with open(path, "rb") as f:
        try:
            records = unpickle_records(f)
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
            raise NB201TableError(
                f"{path} does not unpickle as the {DISTRIBUTION} table: {exc}"
            ) from exc
    if not isinstance(records, dict) or len(records) != NUM_CELLS:
        size = len(records) if isinstance(records, dict) else type(records).__name__
        raise NB201TableError(
            f"{path} holds {size} entries, expected a dict of {NUM_CELLS} cells ({INSTALL_HINT})"
        )
    columns = {metric: np.empty(NUM_CELLS, dtype=np.float64) for metric in METRICS}
    seen = np.zeros(NUM_CELLS, dtype=bool)
    for key, record in records.items():
        if not isinstance(record, _Architecture) or getattr(record, "architecture", None) != key:
            raise NB201TableError(f"{path}: the entry of key {key!r} is not its Architecture")
        row = _row(naslib_tuple(ops_from_naslib(key)))  # validates the key
        seen[row] = True
        for metric in METRICS:
            columns[metric][row] = _metric_value(record, metric, key)
    if not seen.all():  # 15,625 distinct valid keys cover every row; kept as a guard
        raise NB201TableError(f"{path} misses {int((~seen).sum())} cells")
    for values in columns.values():
        values.flags.writeable = False
    return columns


# ---- the table ------------------------------------------------------------------------------------
class NB201Table:
    """Known CIFAR-10 test accuracies (%) of all 15,625 NB201 cells under one metric.

    Cells are 6-tuples/lists of op names in NB201-string edge order, or objects with such an
    ``ops`` attribute (``NB201Arch``). Build with :func:`load_nb201_table`.
    """

    def __init__(self, values: np.ndarray, metric: str = "baseline_accuracy") -> None:
        """``values[r]``: the number of the cell whose NASLib tuple has base-5 digits ``r``."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (NUM_CELLS,):
            raise ValueError(f"values must have shape ({NUM_CELLS},), got {values.shape}")
        self.metric = metric
        self.name = f"nas-bench-201-cifar10 ({DISTRIBUTION} {VERSION})"
        self._values = values
        self._sorted = np.sort(values)
        self._best_first = np.argsort(-values, kind="stable")

    def __len__(self) -> int:
        return NUM_CELLS

    def __repr__(self) -> str:
        return f"NB201Table(name={self.name!r}, metric={self.metric!r}, cells={NUM_CELLS})"

    def accuracy(self, arch: Any) -> float:
        """The table's number (%) for ``arch``."""
        return float(self._values[_row(naslib_tuple(arch))])

    def percentile(self, arch: Any) -> float:
        """Percent of the table's cells scoring strictly below ``arch`` (the best: 99.9936)."""
        below = np.searchsorted(self._sorted, self.accuracy(arch), side="left")
        return 100.0 * float(below) / NUM_CELLS

    def rank(self, arch: Any) -> int:
        """1 + the number of cells scoring strictly above ``arch`` (1 = best; ties share the
        best rank)."""
        not_above = np.searchsorted(self._sorted, self.accuracy(arch), side="right")
        return NUM_CELLS - int(not_above) + 1

    def best(self, k: int = 1) -> list[tuple[tuple[str, ...], float]]:
        """The ``k`` best cells and their numbers, best first (ties in NASLib tuple order)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= NUM_CELLS:
            raise ValueError(f"k must be an int in 1..{NUM_CELLS}, got {k!r}")
        return [(self._cell(int(row)), float(self._values[row])) for row in self._best_first[:k]]

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1, linear interpolation) of the table's numbers."""
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be a number in [0, 1], got {q!r}")
        return float(np.quantile(self._values, q))

    def items(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """Every (cell, number), in NASLib tuple order."""
        for row, key in enumerate(itertools.product(range(len(NASLIB_OP_NAMES)), repeat=NUM_EDGES)):
            yield ops_from_naslib(key), float(self._values[row])

    @staticmethod
    def _cell(row: int) -> tuple[str, ...]:
        base = len(NASLIB_OP_NAMES)
        digits = [(row // base**p) % base for p in reversed(range(NUM_EDGES))]
        return ops_from_naslib(digits)


@functools.lru_cache(maxsize=len(METRICS))
def load_nb201_table(metric: str = "baseline_accuracy") -> NB201Table:
    """The installed analog-nasbench table under ``metric`` (one of :data:`METRICS`), cached per
    metric; the file is read once per process (about half a second)."""
    if metric not in METRICS:
        raise ValueError(f"unknown NB201 table metric {metric!r}; allowed: {', '.join(METRICS)}")
    return NB201Table(_read_columns()[metric], metric=metric)
