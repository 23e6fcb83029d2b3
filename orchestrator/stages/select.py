"""The `select` stage (IT-NAS): the discrete cell the trained operation selector chooses.

One pass over VAL through the mixed supernet (``Supernet.selection_scores``): per cell type the
importance of every op on every edge, averaged over the val images. The space's rule turns the
mean importances into an arch (``SearchSpace.select``; NAS-Bench-201: the top op per edge;
DARTS: per node the top-2 incoming edges by their best non-`none` importance, then that op).

Outputs: `select/result.json` (the arch, its text form, the importance matrices with their
labels, its cost, its val top-1 with inherited weights after BatchNorm recalibration, and,
where the space has a tabular benchmark, the cell's table accuracy and percentile),
`select/importance.png` (a heatmap per cell type, edges x ops, the chosen op framed) and the
stage's MLflow run. The test split is not read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from orchestrator.stage import StageContext, StageSpec
from orchestrator.tracking import Tracker
from search_spaces import build_space
from trainables.evaluator import EvalSpec, Evaluator, default_device

STAGE = "select"
HEATMAP = "importance.png"


@torch.no_grad()
def mean_scores(
    supernet: Any, dataset: Any, batch_size: int, max_images: int | None, device: torch.device
) -> tuple[dict[str, torch.Tensor], int]:
    """Importances averaged over the first `max_images` images of `dataset` (all by default),
    each batch weighted by its size; returns (scores, images seen)."""
    total = len(dataset) if max_images is None else min(max_images, len(dataset))
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, total, batch_size):
        index = list(range(start, min(start + batch_size, total)))
        x, _ = dataset.batch(index)
        for name, scores in supernet.selection_scores(x.to(device)).items():
            weighted = scores.detach().double().cpu() * len(index)
            sums[name] = sums[name] + weighted if name in sums else weighted
    return {name: (s / total).float() for name, s in sums.items()}, total


def plot_importances(
    scores: dict[str, torch.Tensor],
    labels: dict[str, tuple[list[str], list[str]]],
    path: Path,
    title: str,
) -> Path:
    """One heatmap per cell type (rows: edges, columns: ops), values printed, each row's top op
    framed. Written through a temporary file and a rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from orchestrator.files import atomic_path

    names = list(scores)
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(
            2.2 + 1.3 * max(len(labels[n][1]) for n in names) * len(names),
            1.2 + 0.45 * max(len(labels[n][0]) for n in names),
        ),
        squeeze=False,
    )
    for ax, name in zip(axes[0], names, strict=True):
        matrix = scores[name].numpy()
        edges, ops = labels[name]
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(1e-6, float(matrix.max())))
        ax.set_xticks(range(len(ops)), ops, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(edges)), edges, fontsize=8)
        ax.set_title(name, fontsize=9)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if matrix[i, j] < 0.6 * matrix.max() else "black",
                )
            top = int(matrix[i].argmax())
            ax.add_patch(Rectangle((top - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="red"))
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def run(ctx: StageContext) -> dict[str, Any]:
    """Average the selector's importances over val and choose the cell; returns the result."""
    config = ctx.config
    trained = ctx.input("supernet")
    checkpoint = ctx.path(trained["checkpoint"])
    space = build_space(**config.space_spec)
    labels = space.selection_labels()  # refuses a family without a selector, in one line
    device = default_device()
    # one supernet and one decode of val (and of the train slice that re-estimates BatchNorm)
    # serve both the importances and the chosen cell's inherited score
    evaluator = Evaluator(
        EvalSpec(
            checkpoint=str(checkpoint),
            data=config.data,
            space=config.space_spec,
            batch_size=config.select.batch_size,
            precision=config.supernet.precision,
            adapter=trained.get("adapter"),
            purpose=STAGE,
        ),
        device=device,
    )
    tracker: Tracker = ctx.tracker
    tracker.log_dataset(ctx.run_id, evaluator.splits, config.data, context="validation")
    # the importances come first: scoring the chosen cell re-estimates BatchNorm for it
    scores, images = mean_scores(
        evaluator.supernet,
        evaluator.val,
        config.select.batch_size,
        config.select.max_images,
        device,
    )
    arch = space.select(scores)
    text = space.describe(arch)
    cost = space.cost(arch)

    # the chosen cell with inherited weights (BatchNorm re-estimated on train), for reference
    inherited = evaluator.score(arch)

    table_info = None
    table = space.tabular_benchmark()
    if table is not None:
        table_info = {
            "name": table.name,
            "metric": table.metric,
            "accuracy": float(table.accuracy(arch)),
            "percentile": float(table.percentile(arch)),
        }
    ctx.folder.mkdir(parents=True, exist_ok=True)
    heatmap = plot_importances(scores, labels, ctx.folder / HEATMAP, title=f"{config.name}: {text}")
    result = {
        "arch": json.loads(space.to_json(arch)),
        "arch_id": space.arch_id(arch),
        "text": text,
        "scores": {name: s.tolist() for name, s in scores.items()},
        "labels": {name: {"edges": e, "ops": o} for name, (e, o) in labels.items()},
        "images": images,
        "params": int(cost["params"]),
        "flops": int(cost["flops"]),
        "val_top1_inherited": inherited["val_top1"],
        "table": table_info,
        "heatmap": ctx.rel(heatmap),
        "checkpoint_sha256": trained.get("checkpoint_sha256"),
    }
    tracker.log_params(ctx.run_id, {"selected": text, "arch_id": result["arch_id"]})
    metrics = {
        "params": result["params"],
        "flops": result["flops"],
        "val_top1_inherited": inherited["val_top1"],
    }
    if table_info is not None:
        metrics.update(
            {"table_accuracy": table_info["accuracy"], "table_percentile": table_info["percentile"]}
        )
    tracker.log_metrics(ctx.run_id, metrics)
    tracker.client.log_artifact(ctx.run_id, str(heatmap))
    line = (
        f"[select] {text}  {cost['params'] / 1e6:.3f}M params  {cost['flops'] / 1e6:.2f} MFLOPs  "
        f"inherited val {inherited['val_top1']:.2f}%"
    )
    if table_info is not None:
        line += f"  table {table_info['accuracy']:.2f}% (percentile {table_info['percentile']:.1f})"
    print(line, flush=True)
    return result


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("seed", "data", "space", "select", "supernet.precision"),
    needs=("supernet",),
    provides={"selection": ("arch", "arch_id")},
    describe="choose the cell from the selector's importances over one val pass",
)
