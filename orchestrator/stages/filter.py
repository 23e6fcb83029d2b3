"""The `filter` stage (FLORA): low-rank-aware candidate filtering, one local supernet per block.

For every unit of the space (``SearchSpace.filter_units``; a block of the low-rank family), a
local supernet (only that block low-rank, the rest dense) starts from the dense model's SVD,
trains ``filter.steps`` steps with distillation from it, and scores every choice of its block on
a seeded subset of VAL (``trainables/filtering.py``). The local supernets are independent Ray
tasks with ``filter.resources`` each, at most ``filter.resources.workers`` at a time. A block's
result is written to ``filter/blocks/block_NN.json`` (atomically) as soon as it arrives, so an
interrupted stage re-runs only the blocks it lacks.

What a block keeps (:func:`keep`): every non-dominated choice (val top-1 up, MACs down), then
the choices with the smallest accuracy gap to the front at their cost (the front's best val
top-1 at <= their MACs minus their own) until ``keep_fraction`` of the block's choices are kept,
and always the full-rank choice. Outputs: ``filter/candidates.parquet`` (block, choice, MACs,
params, val top-1, gap, on the front, kept), ``filter/candidates.png`` (one panel per block) and
the restricted ``space`` every later stage builds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from orchestrator import mirror
from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_json_atomic
from orchestrator.runtime import check_placement, ensure_ray, place
from orchestrator.stage import StageContext, StageSpec, read_json
from orchestrator.stages.supernet import OPTIMISER_RECIPE
from search_spaces import build_space

STAGE = "filter"
CANDIDATES = "candidates.parquet"
PLOT = "candidates.png"
RULE = "non-dominated, then smallest val gap to the front, up to keep_fraction; full rank always"
#: supernet recipe keys a local supernet's training reads
RECIPE = (*OPTIMISER_RECIPE, "supernet.distill")


def keep(rows: list[dict[str, Any]], keep_fraction: float, full: str) -> list[dict[str, Any]]:
    """``rows`` (choice, val_top1, flops) annotated with ``front``, ``gap`` and ``kept``."""
    by_cost = sorted(rows, key=lambda r: (r["flops"], -r["val_top1"], r["choice"]))
    out = []
    for row in by_cost:
        cheaper_or_equal = [r for r in by_cost if r["flops"] <= row["flops"]]
        dominated = any(
            r["val_top1"] >= row["val_top1"]
            and (r["val_top1"] > row["val_top1"] or r["flops"] < row["flops"])
            for r in cheaper_or_equal
            if r is not row
        )
        out.append(
            {
                **row,
                "front": not dominated,
                "gap": max(r["val_top1"] for r in cheaper_or_equal) - row["val_top1"],
            }
        )
    target = math.ceil(keep_fraction * len(out))
    kept = {r["choice"] for r in out if r["front"]} | {full}
    for row in sorted(out, key=lambda r: (r["gap"], r["flops"], r["choice"])):
        if len(kept) >= target:
            break
        kept.add(row["choice"])
    return [{**r, "kept": r["choice"] in kept} for r in out]


def block_file(folder: Path, unit: int) -> Path:
    return folder / "blocks" / f"block_{unit:02d}.json"


def local_job(config: RaynasConfig, ctx: StageContext, space, unit: int):
    from trainables.filtering import LocalJob

    spec = ctx.space_spec
    overrides = {**spec["overrides"], **space.local_overrides(unit)}
    return LocalJob(
        unit=unit,
        space={**spec, "overrides": overrides},
        dense=mirror.for_workers(ctx.path(ctx.input("dense")["dense"])),
        data=config.data,
        train=config.supernet,
        steps=config.filter.steps,
        lr=config.filter.lr if config.filter.lr is not None else config.supernet.peak_lr,
        seed=config.seed,
        max_images=config.filter.max_images,
        eval_batch_size=config.search.eval_batch_size,
        threads=max(1, int(config.filter.resources.cpus_per_worker)),
    )


def run(ctx: StageContext) -> dict[str, Any]:
    import ray

    from trainables.filtering import filter_unit

    config, folder = ctx.config, ctx.folder
    ctx.input("dense")
    space = build_space(**ctx.space_spec)
    units = space.filter_units()
    if units == 0:
        raise UserInputError(
            f"stage filter: search-space family {space.family!r} has no units to filter"
        )
    results: dict[int, dict[str, Any]] = {}
    for unit in range(units):
        done = read_json(block_file(folder, unit), f"filter result of block {unit}")
        if done is not None:
            results[unit] = done
    todo = [u for u in range(units) if u not in results]
    res = config.filter.resources
    if todo:
        placement = place(config, STAGE, res)
        local = ensure_ray(config.ray)
        check_placement(config, placement, 1, local)
        task = ray.remote(filter_unit).options(**placement.options(), max_retries=2)
        print(
            f"[filter] {len(todo)} of {units} local supernets to train "
            f"({config.filter.steps} steps each, {res.workers} at a time)",
            flush=True,
        )
        pending: dict[Any, int] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < res.workers:
                unit = queue.pop(0)
                pending[task.remote(local_job(config, ctx, space, unit))] = unit
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, UserInputError):
                    raise cause from None
                raise
            outcome["rows"] = keep(outcome["rows"], config.filter.keep_fraction, outcome["full"])
            write_json_atomic(block_file(folder, unit), outcome)
            results[unit] = outcome
            _log_block(ctx, outcome)
    blocks = [_summary(results[u]) for u in range(units)]
    kept = {u: [r["choice"] for r in results[u]["rows"] if r["kept"]] for u in range(units)}
    spec = ctx.space_spec
    restricted = {**spec, "overrides": {**spec["overrides"], **space.restrict_overrides(kept)}}
    build_space(**restricted)  # the restricted space must build
    _write_candidates(folder, results)
    _plot(folder / PLOT, results, config.name)
    ctx.tracker.client.log_artifact(ctx.run_id, str(folder / CANDIDATES))
    ctx.tracker.client.log_artifact(ctx.run_id, str(folder / PLOT))
    total = sum(len(results[u]["rows"]) for u in range(units))
    n_kept = sum(len(v) for v in kept.values())
    ctx.tracker.log_metrics(ctx.run_id, {"kept": n_kept, "candidates": total})
    print(f"[filter] kept {n_kept} of {total} rank tuples over {units} blocks", flush=True)
    return {
        "space": restricted,
        "blocks": blocks,
        "kept": n_kept,
        "candidates": total,
        "rule": RULE,
        "keep_fraction": config.filter.keep_fraction,
        "candidates_file": ctx.rel(folder / CANDIDATES),
        "plot": ctx.rel(folder / PLOT),
        "mlflow_run_id": ctx.run_id,
    }


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    full = next(r for r in rows if r["choice"] == result["full"])
    return {
        "unit": result["unit"],
        "candidates": len(rows),
        "kept": sum(r["kept"] for r in rows),
        "front": sum(r["front"] for r in rows),
        "full_val_top1": full["val_top1"],
        "smallest_kept_flops": min(r["flops"] for r in rows if r["kept"]),
        "train_loss": result["train_loss"],
        "seconds": result["seconds"],
    }


def _log_block(ctx: StageContext, result: dict[str, Any]) -> None:
    s = _summary(result)
    ctx.tracker.log_metrics(
        ctx.run_id,
        {k: s[k] for k in ("kept", "front", "full_val_top1", "train_loss", "seconds")},
        step=s["unit"],
    )
    print(
        f"[filter] block {s['unit']}: kept {s['kept']} of {s['candidates']} "
        f"({s['front']} non-dominated), full rank val {s['full_val_top1']:.2f}%, "
        f"{s['seconds']:.0f} s",
        flush=True,
    )


def _write_candidates(folder: Path, results: dict[int, dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.files import atomic_path

    rows = [{"block": u, **r} for u in sorted(results) for r in results[u]["rows"]]
    table = pa.Table.from_pylist(rows)
    with atomic_path(folder / CANDIDATES) as tmp:
        pq.write_table(table, tmp)


def _plot(path: Path, results: dict[int, dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestrator.files import atomic_path

    units = sorted(results)
    cols = min(4, len(units))
    rows = math.ceil(len(units) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=110, squeeze=False)
    for ax, unit in zip(axes.flat, units, strict=False):
        data = results[unit]["rows"]
        for kept, colour, label in ((False, "0.75", "dropped"), (True, "tab:red", "kept")):
            pts = [r for r in data if r["kept"] == kept]
            ax.scatter(
                [r["flops"] / 1e6 for r in pts],
                [r["val_top1"] for r in pts],
                s=10,
                c=colour,
                label=f"{label} ({len(pts)})",
            )
        ax.set_title(f"block {unit}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(units) :]:
        ax.axis("off")
    fig.supxlabel("MFLOPs of the whole model (MACs)", fontsize=8)
    fig.supylabel("val top-1 (%)", fontsize=8)
    fig.suptitle(f"{title}: candidate filtering", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "filter", "search.eval_batch_size", *RECIPE),
    ignores=("filter.resources",),
    needs=("dense",),
    optional=("space",),
    provides={"space": ("space",)},
    describe="one local supernet per block on Ray; drop each block's dominated rank tuples",
)
