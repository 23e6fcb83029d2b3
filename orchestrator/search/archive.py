"""`<run>/archive.parquet`: every evaluated candidate, one row each.

Columns: ``trial`` (Optuna trial number), ``arch_id``, ``arch`` (canonical JSON), one
``arch.<key>`` column per key of the space's flat encoding, the reported metrics (``val_top1``,
``val_loss``, ``params``, ``flops``, ``latency_ms``), ``start_time``/``end_time`` (Unix seconds)
and where it ran. The file is rewritten atomically after each evaluation (write a temporary
file, then rename), so a reader or a resumed run never sees half a row; the archive is what
makes resume skip candidates already evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import UserInputError
from orchestrator.files import atomic_path

ARCHIVE_FILE = "archive.parquet"
ARCH_PREFIX = "arch."
METRICS = ("val_top1", "val_loss", "params", "flops", "latency_ms")
LATENCY_PREFIXES = ("latency_ms.", "latency_node.")


class ArchiveError(UserInputError):
    """An archive file that cannot be read."""


class Archive:
    """The evaluated candidates of one search, keyed by arch id."""

    def __init__(
        self,
        path: str | Path,
        rows: Iterable[Mapping[str, Any]] = (),
        stamp: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.stamp = dict(stamp or {})  # columns every row gets, e.g. the scoring checkpoint
        self._rows: dict[str, dict[str, Any]] = {}
        for row in rows:
            self._rows[row["arch_id"]] = dict(row)

    @classmethod
    def load(cls, path: str | Path, stamp: Mapping[str, Any] | None = None) -> Archive:
        """The archive at `path`, empty when the file does not exist yet. With `stamp`, every
        row must carry those values (e.g. ``scored_by``: rows scored by another supernet
        checkpoint are never mixed in) and new rows get them."""
        path = Path(path)
        if not path.exists():
            return cls(path, stamp=stamp)
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ArchiveError(
                f"{path}: not a readable archive ({exc}); move it away to start over"
            ) from None
        if rows and "arch_id" not in rows[0]:
            raise ArchiveError(f"{path}: has no arch_id column; not a raynas archive")
        for key, value in (stamp or {}).items():
            other = {row.get(key) for row in rows} - {value}
            if other:
                raise ArchiveError(
                    f"{path}: holds candidates with {key}={sorted(map(str, other))[0]}, not "
                    f"{value}; an archive is never continued over another {key}: move it away"
                )
        return cls(path, rows, stamp)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, arch_id: str) -> bool:
        return arch_id in self._rows

    def get(self, arch_id: str) -> dict[str, Any]:
        return self._rows[arch_id]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Rows in trial order."""
        return sorted(self._rows.values(), key=lambda r: r["trial"])

    def add(self, row: Mapping[str, Any]) -> None:
        """Add one evaluated candidate and rewrite the file atomically."""
        missing = {"trial", "arch_id", "arch"} - set(row)
        if missing:
            raise ValueError(f"archive row lacks {sorted(missing)}")
        self._rows[row["arch_id"]] = {**row, **self.stamp}
        self.write()

    def write(self) -> None:
        write_rows(self.rows, self.path)


def make_row(
    trial: int,
    arch_id: str,
    arch_json: str,
    encoded: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """One archive row from a trial's identity, flat encoding and reported metrics."""
    row: dict[str, Any] = {"trial": int(trial), "arch_id": arch_id, "arch": arch_json}
    row.update({ARCH_PREFIX + k: v for k, v in encoded.items()})
    for key in METRICS:
        row[key] = metrics.get(key)
    for key in ("start_time", "end_time"):
        row[key] = float(metrics[key]) if metrics.get(key) is not None else None
    if row["start_time"] is not None and row["end_time"] is not None:
        row["eval_seconds"] = row["end_time"] - row["start_time"]
    row["device"] = metrics.get("device")
    row["node"] = metrics.get("node_id")
    row["node_group"] = metrics.get("node_group")
    row["pid"] = metrics.get("pid")
    # per latency target: its latency and the node that measured it ("predicted": its model)
    for key in sorted(metrics):
        if key.startswith(LATENCY_PREFIXES):
            row[key] = metrics[key]
    return row


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Rows to parquet at `path` through a temporary file and a rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def encoded_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The flat arch encoding stored in an archive row."""
    return {k[len(ARCH_PREFIX) :]: v for k, v in row.items() if k.startswith(ARCH_PREFIX)}
