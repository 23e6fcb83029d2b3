"""The Pareto front of an archive (val top-1 up, the chosen costs down) and its hypervolume.

Writes `<run>/pareto.parquet` (the non-dominated rows, cheapest first) and `<run>/pareto.png`
(accuracy vs MFLOPs: every candidate in grey, the front highlighted).

Hypervolume (DESIGN.md 4.5). :func:`hypervolume` is the volume the rows dominate in the space
of ALL the search's objectives: val top-1 maximised and each configured cost (``flops``,
``params``, ``latency``) minimised, so 2-D with one cost, 3-D with two, 4-D with three. It is
computed exactly by `moocore <https://multi-objective.github.io/moocore/python/>`_
(``moocore.hypervolume``: a maintained C implementation of the standard algorithms, O(n log n)
in 2-D and 3-D, HV4D+ in 4-D). Optuna has a hypervolume routine only in its private
``optuna._hypervolume`` (its public API plots a hypervolume history, it computes none), and
pymoo's brings a whole optimisation framework; moocore is small, public and exact.

Normalisation: each axis is measured from the ideal value to its reference, so the figure is
in [0, 1]: accuracy as ``(top-1 - 0 %) / (100 % - 0 %)``, each cost as ``cost / reference``.
The hypervolume is then the share of the box between the ideal point (100 % top-1 at zero
cost) and the reference point that the front dominates. A point at or beyond the reference on
any axis (0 % top-1, or a cost of at least its reference) adds nothing, and dominated points
add nothing by definition.

Reference point, FIXED per search space so that runs of one space compare
(:func:`space_reference`):

* val top-1: 0 %.
* ``flops``, ``params``: :data:`REFERENCE_FACTOR` (1.1) x the analytic cost
  (``SearchSpace.cost``) of the space's largest arch (``SearchSpace.largest()``: every choice
  at its maximum, the most parameters and MACs of the space; for a low-rank space the dense
  model, which filtering never removes). 1.1 rather than 1 so that the largest arch itself,
  which the search evaluates first (``search.seed_extremes``), adds volume instead of lying
  on the boundary.
* ``latency`` has no analytic maximum: 1.1 x the latency (ms) of the largest arch on the
  latency objective's target, as the search scored it: predicted by the target's fitted model
  (``search.latency: predicted``), or its archive row (measured; present unless
  ``seed_extremes`` is off or a constraint rejected it). Failing both, 1.1 x the largest
  latency in the archive, which depends on the run. Which rule applied is recorded beside the
  value. Measured latency also varies a little between runs (timing noise), so comparisons
  that must be exact pass one explicit reference to :func:`hypervolume` for every run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


#: The cost references are this factor times the cost of the space's largest arch.
REFERENCE_FACTOR = 1.1
#: The accuracy reference (val top-1, %) and the ideal it is measured up to.
ACCURACY_REFERENCE = 0.0
ACCURACY_IDEAL = 100.0


def space_reference(
    space: Any,
    objectives: Sequence[str],
    rows: Sequence[dict[str, Any]] = (),
    largest_latency: float | None = None,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The hypervolume reference point of `space` for `objectives`, and per axis its rule.

    Returns ``({"val_top1": 0.0, <objective>: value, ...}, {axis: rule text})`` with values in
    archive units (MACs, parameters, ms). `rows` (the archive) and `largest_latency` (the
    largest arch's predicted latency, when the search predicts latency) only serve the
    ``latency`` objective; its value is None when neither says anything (nothing evaluated).
    See the module docstring for the rules.
    """
    reference: dict[str, float | None] = {ACCURACY: ACCURACY_REFERENCE}
    rules = {ACCURACY: f"fixed; ideal {ACCURACY_IDEAL:g} %"}
    largest = space.largest()
    cost = space.cost(largest)
    for objective in objectives:
        if objective in cost:
            reference[objective] = REFERENCE_FACTOR * float(cost[objective])
            rules[objective] = f"{REFERENCE_FACTOR:g} x the largest arch's {cost[objective]}"
            continue
        if objective != "latency":
            raise ValueError(
                f"objective {objective!r} has no reference rule; allowed: {sorted(COST_COLUMN)}"
            )
        column = COST_COLUMN[objective]
        own = space.arch_id(largest)
        measured = [
            r[column] for r in rows if r.get("arch_id") == own and r.get(column) is not None
        ]
        seen = [float(r[column]) for r in rows if r.get(column) is not None]
        if largest_latency is not None:
            base, rule = float(largest_latency), "the largest arch's, predicted"
        elif measured:
            base, rule = float(measured[0]), "the largest arch's, as evaluated"
        elif seen:
            base, rule = max(seen), "the archive's largest (run-dependent: no largest arch)"
        else:
            reference[objective], rules[objective] = None, "nothing evaluated"
            continue
        reference[objective] = REFERENCE_FACTOR * base
        rules[objective] = f"{REFERENCE_FACTOR:g} x {rule}: {base:.4g} ms"
    return reference, rules


def hypervolume(
    rows: Sequence[dict[str, Any]],
    objectives: Sequence[str],
    reference: Mapping[str, float | None],
) -> float:
    """Normalised hypervolume in [0, 1] of `rows` for (val top-1 max, each objective min).

    `reference` holds one value per objective in archive units (``space_reference``), and
    optionally ``val_top1`` (default 0 %). Rows missing a value are skipped; rows at or beyond
    the reference on any axis, and dominated rows, add nothing. Computed by moocore.
    """
    costs = list(objectives)
    usable = [
        r
        for r in rows
        if r.get(ACCURACY) is not None and all(r.get(COST_COLUMN[c]) is not None for c in costs)
    ]
    if not usable:
        return 0.0
    acc_ref = float(reference.get(ACCURACY) or ACCURACY_REFERENCE)
    bad = {c: reference.get(c) for c in costs if not (reference.get(c) or 0) > 0}
    if bad or not acc_ref < ACCURACY_IDEAL:
        raise ValueError(
            f"hypervolume reference {dict(reference)} for objectives {costs}: "
            f"{bad or {ACCURACY: acc_ref}} is not usable; allowed: a positive reference for "
            f"each objective and {ACCURACY} below {ACCURACY_IDEAL:g}"
        )
    import moocore
    import numpy as np

    points = []
    for row in usable:
        point = [(float(row[ACCURACY]) - acc_ref) / (ACCURACY_IDEAL - acc_ref)]
        point += [float(row[COST_COLUMN[c]]) / float(reference[c]) for c in costs]
        # only a point strictly inside the box dominates any volume
        if point[0] > 0 and all(v < 1 for v in point[1:]):
            points.append(point)
    if not points:
        return 0.0
    return float(
        moocore.hypervolume(
            np.asarray(points, dtype=float),
            ref=[0.0] + [1.0] * len(costs),
            maximise=[True] + [False] * len(costs),
        )
    )


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
