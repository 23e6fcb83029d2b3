"""The `report` stage: `<run>/report.md`, a readable summary of what every stage recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.files import write_text_atomic
from orchestrator.secrets import redact
from orchestrator.stage import StageContext, StageSpec
from orchestrator.stages.search import storage_url
from orchestrator.tracking import tracking_uri

STAGE = "report"
REPORT = "report.md"


def pareto_table(models: list[dict[str, Any]]) -> list[list[str]]:
    """Rows (arch id, params M, MFLOPs, val top-1, test top-1, arch) of the exported subnets."""
    rows = []
    for m in sorted(models, key=lambda m: m["flops"]):
        arch = m["arch"]
        shape = (
            f"embed {arch.get('embed_dim')}, depth {arch.get('depth')}" if "depth" in arch else ""
        )
        rows.append(
            [
                m["arch_id"],
                f"{m['params'] / 1e6:.3f}",
                f"{m['flops'] / 1e6:.2f}",
                f"{m['val_top1']:.2f}",
                f"{m['test_top1']:.2f}",
                shape,
            ]
        )
    return rows


TABLE_HEADER = ["arch id", "params (M)", "MFLOPs", "val top-1 %", "test top-1 %", "arch"]


def next_commands(config: RaynasConfig) -> list[str]:
    """The commands that open what this run wrote: MLflow UI and optuna-dashboard."""
    run_dir = Path(config.run_path).resolve()
    configured = config.tracking.uri
    uri = redact(configured) if configured else tracking_uri(None, str(run_dir))
    mlflow_cmd = (
        f"mlflow ui --backend-store-uri {uri} --port 5000"
        if uri.startswith("sqlite")
        else f"open {uri} (experiment {config.tracking.experiment})"
    )
    return [mlflow_cmd, f"optuna-dashboard {redact(storage_url(config))} --port 8080"]


def render(config: RaynasConfig, upstream: dict[str, dict[str, Any]], searched, exported) -> str:
    lines = [
        f"# raynas run `{config.name}`",
        "",
        f"method **{config.method}**, space `{config.family}/{config.space.preset or 'default'}`, "
        f"data `{config.data.name}`, seed {config.seed}",
        "",
        "## Pareto subnets",
        "",
        f"{len(exported['models'])} of {exported['front_size']} Pareto subnets exported to "
        f"`export/<arch id>/`; test top-1 over {exported['test_images']} test images, measured "
        "once, here. Nothing is chosen by test accuracy: the best subnet by val top-1 is "
        f"`{exported['best_val']}`, test top-1 {exported['test_top1_of_best_val']:.2f}%.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in pareto_table(exported["models"])]
    lines += [
        "",
        "![accuracy vs MFLOPs](pareto.png)",
        "",
        "## Search",
        "",
        f"- strategy `{searched['strategy']}`, objectives: val top-1 up, "
        f"{', '.join(searched['objectives'])} down",
        f"- {searched['evaluated']} candidates evaluated of a budget of {searched['budget']} "
        f"({searched['rejected']} proposals rejected by the constraints, "
        f"{searched['duplicates']} duplicates answered from the archive, {searched['failed']} failed trials)",
        f"- hypervolume (val top-1 x MFLOPs below the largest candidate): "
        f"{searched['hypervolume'] / 1e6:.1f}",
        f"- study `{searched['study']}` in `{searched['storage']}`; every candidate in `archive.parquet`",
    ]
    for stage, trained in upstream.items():
        if not trained.get("history"):
            continue  # a training stage's result carries its per-epoch history
        last = trained["history"][-1]
        probes = ", ".join(
            f"{k.removeprefix('val_top1_')} {v:.1f}%"
            for k, v in last.items()
            if k.startswith("val_top1_") and not k.endswith("mean")
        )
        lines += [
            "",
            f"## Stage `{stage}`",
            "",
            f"- {trained['epochs']} epochs ({config.supernet.sampling} sampling), "
            f"checkpoint `{trained['checkpoint']}`",
            f"- val top-1 after the last epoch: {probes}",
        ]
    lines += ["", "## Open it", "", "```"] + next_commands(config) + ["```", ""]
    return "\n".join(lines)


def run(ctx: StageContext) -> dict[str, Any]:
    text = render(ctx.config, ctx.upstream, ctx.input("front"), ctx.input("exported"))
    path = write_text_atomic(ctx.run_dir / REPORT, text)
    ctx.tracker.client.log_artifact(ctx.run_id, str(path))
    return {"report": ctx.rel(path)}


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("name", "method", "seed", "data", "space", "tracking", "search.storage"),
    needs=("front", "exported"),
    optional=("supernet",),
    writes=(REPORT,),
    always=True,
    describe="write report.md",
)
