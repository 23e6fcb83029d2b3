"""The Pareto front of an archive: val top-1 up, the chosen costs down.

Writes `<run>/pareto.parquet` (the non-dominated rows, cheapest first) and `<run>/pareto.png`
(accuracy vs MFLOPs: every candidate in grey, the front highlighted).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.files import atomic_path
from orchestrator.search.archive import write_rows

PARETO_FILE = "pareto.parquet"
PLOT_FILE = "pareto.png"
ACCURACY = "val_top1"
#: Archive column of each cost objective.
COST_COLUMN = {"flops": "flops", "params": "params", "latency": "latency_ms"}


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """`a` dominates `b` when it is no worse everywhere and better somewhere (all minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _point(row: dict[str, Any], costs: Sequence[str]) -> tuple[float, ...]:
    return (-float(row[ACCURACY]), *(float(row[COST_COLUMN[c]]) for c in costs))


def pareto_front(rows: Sequence[dict[str, Any]], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """The non-dominated rows for (val top-1 max, each objective min), cheapest first.

    Rows with equal objective values are all kept (they are not dominated by each other) but
    duplicates of one arch cannot occur: the archive holds each arch once.
    """
    usable = [
        r
        for r in rows
        if r.get(ACCURACY) is not None
        and all(r.get(COST_COLUMN[c]) is not None for c in objectives)
    ]
    points = [_point(r, objectives) for r in usable]
    front = [
        row
        for row, p in zip(usable, points, strict=True)
        if not any(dominates(q, p) for q in points if q is not p)
    ]
    first = COST_COLUMN[objectives[0]]
    return sorted(front, key=lambda r: (r[first], -r[ACCURACY]))


def hypervolume_2d(
    rows: Sequence[dict[str, Any]], cost: str = "flops", reference: float | None = None
) -> float:
    """Area dominated by the (cost, accuracy) front up to `reference` cost and 0 % accuracy.

    `reference` defaults to the largest cost among `rows`, so the measure compares fronts of
    the same space at equal budget (DESIGN.md 4.5); pass the same reference for both.
    """
    column = COST_COLUMN[cost]
    points = sorted(
        (float(r[column]), float(r[ACCURACY])) for r in rows if r.get(column) is not None
    )
    if not points:
        return 0.0
    ref = reference if reference is not None else max(c for c, _ in points)
    volume, best = 0.0, 0.0
    # sweep from the cheapest: each point adds (ref - cost) x its gain over the best so far
    for c, acc in points:
        if c > ref:
            continue
        if acc > best:
            volume += (ref - c) * (acc - best)
            best = acc
    return volume


def write_front(front: list[dict[str, Any]], run_dir: str | Path) -> Path:
    path = Path(run_dir) / PARETO_FILE
    write_rows(front, path)
    return path


def plot_front(
    rows: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Accuracy vs MFLOPs: every candidate in grey, the Pareto front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter(
        [r["flops"] / 1e6 for r in rows],
        [r[ACCURACY] for r in rows],
        s=14,
        c="0.7",
        label=f"evaluated ({len(rows)})",
    )
    by_flops = sorted(front, key=lambda r: r["flops"])
    ax.plot(
        [r["flops"] / 1e6 for r in by_flops],
        [r[ACCURACY] for r in by_flops],
        "o-",
        c="tab:red",
        ms=5,
        label=f"Pareto front ({len(front)})",
    )
    ax.set_xlabel("MFLOPs (multiply-accumulates)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
