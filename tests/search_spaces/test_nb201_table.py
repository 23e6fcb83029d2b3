"""The NAS-Bench-201 CIFAR-10 table of analog-nasbench 0.1.3, read without importing the package.

Expected numbers are from /work/shared/research/nb201.md, section 2 (computed from the same file).
"""

from __future__ import annotations

import dataclasses
import itertools
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search_spaces.cell import table as nbt
from search_spaces.cell.table import (
    METRICS,
    NB201Table,
    is_connected,
    load_nb201_table,
    naslib_tuple,
    ops_from_naslib,
)

OPTIMUM = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
DRNAS = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


def parse(text: str) -> tuple[str, ...]:
    """A tiny NB201-string parser for the fixtures (the space owns the real one)."""
    ops = []
    for node, part in enumerate(text.split("+"), start=1):
        tokens = [t for t in part.split("|") if t]
        assert [int(t.split("~")[1]) for t in tokens] == list(range(node))
        ops += [t.split("~")[0] for t in tokens]
    return tuple(ops)


def same(op: str) -> tuple[str, ...]:
    return (op,) * 6


@dataclasses.dataclass(frozen=True)
class FakeArch:
    ops: tuple[str, ...]


@pytest.fixture(scope="module")
def table() -> NB201Table:
    return load_nb201_table()


def test_size_and_name(table: NB201Table) -> None:
    assert len(table) == 15625
    assert table.metric == "baseline_accuracy"
    assert "nas-bench-201" in table.name and "0.1.3" in table.name
    assert load_nb201_table() is table  # cached per metric


def test_fixture_parser() -> None:
    assert parse(OPTIMUM) == (
        "nor_conv_3x3",
        "nor_conv_3x3",
        "nor_conv_3x3",
        "skip_connect",
        "nor_conv_1x1",
        "nor_conv_3x3",
    )


def test_conversion_fixtures() -> None:
    # String positions 2 (edge 2<-1) and 3 (edge 3<-0) swap; ops 0 skip, 1 none, 2 conv3x3, ...
    assert naslib_tuple(parse(OPTIMUM)) == (2, 2, 0, 2, 3, 2)
    assert naslib_tuple(parse(DRNAS)) == (2, 2, 0, 2, 2, 2)
    assert naslib_tuple(parse(RESNET)) == (2, 1, 0, 2, 1, 0)
    assert ops_from_naslib((2, 2, 0, 2, 3, 2)) == parse(OPTIMUM)
    assert naslib_tuple(same("none")) == (1,) * 6
    assert naslib_tuple(same("skip_connect")) == (0,) * 6


def test_round_trip_over_all_cells() -> None:
    keys = list(itertools.product(range(5), repeat=6))
    cells = [ops_from_naslib(k) for k in keys]
    assert len(set(cells)) == 15625
    assert all(naslib_tuple(c) == k for c, k in zip(cells, keys, strict=True))
    for names in itertools.product(nbt.OP_NAMES, repeat=6):
        assert ops_from_naslib(naslib_tuple(names)) == names


def test_known_cells(table: NB201Table) -> None:
    assert table.accuracy(same("none")) == 10.0
    assert table.accuracy(parse(OPTIMUM)) == pytest.approx(94.0664, abs=1e-4)
    assert table.rank(parse(OPTIMUM)) == 1
    assert table.accuracy(parse(DRNAS)) == pytest.approx(93.988, abs=1e-4)
    assert table.rank(parse(DRNAS)) == 3
    assert table.accuracy(same("skip_connect")) == pytest.approx(60.78, abs=0.01)
    assert table.rank(same("skip_connect")) == 15145
    assert table.accuracy(same("nor_conv_3x3")) == pytest.approx(93.24, abs=0.01)
    # 93.2424 is a three-way tie at sorted positions 332..334 (nb201.md 2.4 lists 333); ties
    # share the best rank.
    assert table.rank(same("nor_conv_3x3")) == 332
    assert table.accuracy(parse(RESNET)) == pytest.approx(93.44, abs=0.01)
    assert table.rank(parse(RESNET)) == 152
    assert table.accuracy(same("nor_conv_1x1")) == pytest.approx(89.53, abs=0.01)
    assert table.accuracy(same("avg_pool_3x3")) == pytest.approx(50.29, abs=0.01)


def test_accepts_lists_and_arch_objects(table: NB201Table) -> None:
    ops = parse(OPTIMUM)
    assert table.accuracy(list(ops)) == table.accuracy(FakeArch(ops)) == table.accuracy(ops)
    assert table.percentile(FakeArch(ops)) == table.percentile(ops)


def test_best_percentile_quantile(table: NB201Table) -> None:
    best = table.best(5)
    assert [naslib_tuple(c) for c, _ in best] == [
        (2, 2, 0, 2, 3, 2),
        (2, 2, 0, 4, 2, 2),
        (2, 2, 0, 2, 2, 2),
        (2, 2, 0, 3, 2, 2),
        (2, 3, 0, 2, 3, 2),
    ]
    assert [a for _, a in best] == sorted((a for _, a in best), reverse=True)
    assert table.best()[0] == best[0]
    assert table.percentile(best[0][0]) == pytest.approx(100 * 15624 / 15625)  # 99.9936
    assert table.percentile(same("none")) == 0.0  # the 341 chance-level cells are the lowest
    top1 = table.best(157)[-1]  # the top-1% threshold (157th best)
    assert top1[1] == pytest.approx(93.4368, abs=1e-4)
    assert table.rank(top1[0]) == 157
    assert table.percentile(top1[0]) == pytest.approx(100 * (15625 - 157) / 15625)
    assert table.best(16)[-1][1] == pytest.approx(93.8148, abs=1e-4)  # top-0.1%
    assert table.quantile(0.0) == 10.0
    assert table.quantile(1.0) == pytest.approx(94.0664, abs=1e-4)
    assert table.quantile(0.5) == pytest.approx(90.406, abs=1e-3)
    assert table.quantile(0.99) == pytest.approx(93.44, abs=0.01)
    with pytest.raises(ValueError, match="q must be"):
        table.quantile(1.5)
    with pytest.raises(ValueError, match="k must be"):
        table.best(0)


def test_chance_cells_are_exactly_the_disconnected_ones(table: NB201Table) -> None:
    chance = {c for c, a in table.items() if a == 10.0}
    disconnected = {c for c, _ in table.items() if not is_connected(c)}
    assert len(chance) == 341
    assert chance == disconnected
    assert min(a for c, a in table.items() if is_connected(c)) == pytest.approx(35.07, abs=0.01)
    assert all(table.rank(c) == 15625 - 341 + 1 for c in list(chance)[:5])  # ties share a rank


def test_is_connected() -> None:
    assert not is_connected(same("none"))
    assert is_connected(parse(RESNET))
    only_direct = ("none", "none", "none", "skip_connect", "none", "none")
    assert is_connected(only_direct)
    dead_end = ("skip_connect", "none", "skip_connect", "none", "none", "none")  # 0->1->2, 2 stops
    assert not is_connected(dead_end)


def test_items_and_values_agree(table: NB201Table) -> None:
    items = list(table.items())
    assert len(items) == 15625
    cell, acc = items[123]
    assert table.accuracy(cell) == acc
    values = np.array([a for _, a in items])
    assert values.max() == pytest.approx(94.0664, abs=1e-4)
    assert len(np.unique(values)) == 12711


def test_other_metrics() -> None:
    assert len(METRICS) == 13
    ptq = load_nb201_table("ptq_accuracy")
    assert ptq.metric == "ptq_accuracy"
    assert ptq.quantile(1.0) == pytest.approx(93.84, abs=0.01)
    drift = load_nb201_table("analog_drift_60")
    assert 0.0 < drift.accuracy(parse(OPTIMUM)) <= 100.0


def test_unknown_metric() -> None:
    with pytest.raises(ValueError, match="unknown NB201 table metric 'params'.*baseline_accuracy"):
        load_nb201_table("params")


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (("none",) * 5, "6 edges"),
        (("none",) * 5 + ("conv",), r"position 5 \(edge 3<-2\) is 'conv'; allowed: none, skip"),
        ("none" * 6, "tuple or list"),
        ((1, 1, 1, 1, 1, 1), "position 0"),
    ],
)
def test_invalid_ops(table: NB201Table, ops: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        table.accuracy(ops)


def test_invalid_naslib_tuple() -> None:
    with pytest.raises(ValueError, match="position 2"):
        ops_from_naslib((0, 0, 5, 0, 0, 0))
    with pytest.raises(ValueError, match="6 op indices"):
        ops_from_naslib((0, 0))


def test_restricted_unpickler_refuses_other_globals() -> None:
    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match=r"global (os|posix)\.system is not allowed"):
        nbt.unpickle_records(pickle.dumps(Exploit()))
    protocol0 = b"cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(pickle.UnpicklingError, match=r"global os\.system is not allowed"):
        nbt.unpickle_records(protocol0)
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        nbt.unpickle_records(b"cbuiltins\neval\n(S'1'\ntR.")


def test_restricted_unpickler_admits_the_record_classes() -> None:
    blob = (
        b"\x80\x04\x8c\x13analognasbench.data\x8c\x10DriftMeasurement\x93)\x81}("
        + b"\x8c\x05valueG"
        + struct.pack(">d", 12.5)
        + b"\x8c\x0buncertaintyG"
        + struct.pack(">d", 0.25)
        + b"ub."
    )
    record = nbt.unpickle_records(blob)
    assert type(record).__name__ == "_DriftMeasurement"
    assert (record.value, record.uncertainty) == (12.5, 0.25)


def test_missing_package_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nbt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(nbt.NB201TableError, match=r"pip install analog-nasbench==0\.1\.3") as info:
        nbt.data_path()
    assert "analognasbench" in str(info.value) and "\n" not in str(info.value)


def test_does_not_import_the_package_pandas_or_pkg_resources() -> None:
    code = (
        "import sys\n"
        "from search_spaces.cell.table import load_nb201_table\n"
        "t = load_nb201_table()\n"
        "assert len(t) == 15625\n"
        "print(sorted(m for m in ('analognasbench', 'pkg_resources', 'pandas') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
