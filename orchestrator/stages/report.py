"""The `report` stage: `<run>/report.md`, a readable summary of what every stage recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.config.schema import RunConfig as RaynasConfig
from orchestrator.errors import UserInputError
from orchestrator.files import write_text_atomic
from orchestrator.stages import export as export_stage
from orchestrator.stages import search as search_stage
from orchestrator.stages import supernet as supernet_stage
from orchestrator.tracking import Tracker, tracking_uri

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
    uri = tracking_uri(config.tracking.uri, str(run_dir))
    mlflow_cmd = (
        f"mlflow ui --backend-store-uri {uri} --port 5000"
        if uri.startswith("sqlite")
        else f"open {uri} (experiment {config.tracking.experiment})"
    )
    return [mlflow_cmd, f"optuna-dashboard {search_stage.storage_url(config)} --port 8080"]


def render(config: RaynasConfig) -> str:
    run_dir = config.run_path
    searched = search_stage.read_result(run_dir)
    exported = export_stage.read_summary(run_dir)
    if searched is None or exported is None:
        raise UserInputError(f"{run_dir}: the search and export stages have not completed yet")
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
        "once, here.",
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
    for stage, title in (("supernet", "Supernet"), ("mole", "MoLE experts and router (TAS-LoRA)")):
        trained = supernet_stage.read_result(run_dir, stage)
        if trained is None:
            continue
        last = trained["history"][-1]
        probes = ", ".join(
            f"{k.removeprefix('val_top1_')} {v:.1f}%"
            for k, v in last.items()
            if k.startswith("val_top1_") and not k.endswith("mean")
        )
        lines += [
            "",
            f"## {title}",
            "",
            f"- {trained['epochs']} epochs ({config.supernet.sampling} sampling), "
            f"checkpoint `{trained['checkpoint']}`",
            f"- val top-1 after the last epoch: {probes}",
        ]
    lines += ["", "## Open it", "", "```"] + next_commands(config) + ["```", ""]
    return "\n".join(lines)


def run_report_stage(config: RaynasConfig, tracker: Tracker | None = None) -> Path:
    text = render(config)
    path = write_text_atomic(Path(config.run_path).resolve() / REPORT, text)
    if tracker is not None:
        run_id = tracker.stage_run(STAGE)
        tracker.client.log_artifact(run_id, str(path))
        tracker.finish(run_id, ok=True)
    return path
