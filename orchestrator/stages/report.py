"""The `report` stage: `<run>/report.md`, a readable summary of what every stage recorded."""

from __future__ import annotations

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
        shape = m.get("text") or (
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
    run_dir = config.workspace
    configured = config.tracking.uri
    uri = redact(configured) if configured else tracking_uri(None, str(run_dir))
    mlflow_cmd = (
        f"mlflow ui --backend-store-uri {uri} --port 5000"
        if uri.startswith("sqlite")
        else f"open {uri} (experiment {config.tracking.experiment})"
    )
    return [mlflow_cmd, f"optuna-dashboard {redact(storage_url(config))} --port 8080"]


def selection_lines(selection: dict[str, Any]) -> list[str]:
    """The selected cell: its text form, cost, table reading and the importance matrices."""
    lines = [
        "## Selected cell",
        "",
        f"`{selection['text']}`",
        "",
        f"- {selection['params'] / 1e6:.3f}M params, {selection['flops'] / 1e6:.2f} MFLOPs; "
        f"val top-1 with inherited weights (BatchNorm recalibrated): "
        f"{selection['val_top1_inherited']:.2f}%",
        f"- importances averaged over {selection['images']} val images",
    ]
    table = selection.get("table")
    if table:
        lines.append(
            f"- {table['name']}: {table['metric']} {table['accuracy']:.2f}%, percentile "
            f"{table['percentile']:.1f} (the table is CIFAR-10 at 200 epochs: on other data a "
            "transfer proxy, not this run's accuracy)"
        )
    lines += ["", f"![importances]({selection['heatmap']})", ""]
    for name, scores in selection["scores"].items():
        labels = selection["labels"][name]
        lines += [f"Importances, `{name}` (rows: edges, columns: ops):", ""]
        lines.append("| edge | " + " | ".join(labels["ops"]) + " |")
        lines.append("|---|" + "---|" * len(labels["ops"]))
        for edge, row in zip(labels["edges"], scores, strict=True):
            top = max(range(len(row)), key=row.__getitem__)
            cells = [f"**{v:.3f}**" if j == top else f"{v:.3f}" for j, v in enumerate(row)]
            lines.append(f"| {edge} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def exported_lines(searched: dict[str, Any], exported: dict[str, Any]) -> list[str]:
    retrained = searched.get("rows") is not None
    what = "retrained arch" if retrained else f"of {exported['front_size']} Pareto subnets"
    lines = [
        "## Retrained model" if retrained else "## Pareto subnets",
        "",
        f"{len(exported['models'])} {what} exported to `export/<arch id>/`; test top-1 over "
        f"{exported['test_images']} test images, measured once, here. Nothing is chosen by test "
        f"accuracy: the best model by val top-1 is `{exported['best_val']}`, test top-1 "
        f"{exported['test_top1_of_best_val']:.2f}%.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in pareto_table(exported["models"])]
    reference = exported.get("reference")
    if reference:
        lines += [
            "",
            f"The dense model (`{reference['path']}`): {reference['params'] / 1e6:.3f}M params, "
            f"{reference['flops'] / 1e6:.2f} MFLOPs, val top-1 {reference['val_top1']:.2f}%, "
            f"test top-1 {reference['test_top1']:.2f}%. Against it:",
            "",
            "| arch id | MACs cut | test top-1 change (points) |",
            "|---|---|---|",
        ]
        for m in sorted(exported["models"], key=lambda m: m["flops"]):
            lines.append(
                f"| {m['arch_id']} | {100 * (1 - m['flops'] / reference['flops']):.1f}% | "
                f"{m['test_top1'] - reference['test_top1']:+.2f} |"
            )
    if not retrained:
        lines += ["", "![accuracy vs MFLOPs](pareto.png)"]
    return lines + [""]


#: How each reference axis is shown: label, unit, scale from archive units.
REFERENCE_UNITS = {
    "val_top1": ("val top-1", "%", 1.0),
    "flops": ("FLOPs", "MMACs", 1e-6),
    "params": ("params", "M", 1e-6),
    "latency": ("latency", "ms", 1.0),
}


def hypervolume_line(searched: dict[str, Any]) -> str:
    """The front's hypervolume with its objectives and reference point (each axis's rule)."""
    reference = searched.get("hypervolume_reference")
    if reference is None:  # a search result written before the hypervolume was normalised
        return f"- hypervolume (older definition, not normalised): {searched['hypervolume']:.4g}"
    rules = searched.get("hypervolume_rule", {})
    axes = []
    for key, value in reference.items():
        label, unit, scale = REFERENCE_UNITS.get(key, (key, "", 1.0))
        shown = "none" if value is None else f"{value * scale:.4g} {unit}".rstrip()
        axes.append(f"{label} {shown}" + (f" ({rules[key]})" if key in rules else ""))
    names = ", ".join(["val top-1 up"] + [f"{o} down" for o in searched["objectives"]])
    return (
        f"- hypervolume {searched['hypervolume']:.4f} over ({names}), normalised to [0, 1]: the "
        f"share of the box from the ideal point (100 % top-1 at zero cost) to the reference "
        f"point that the front dominates; reference point: {'; '.join(axes)}"
    )


def search_lines(searched: dict[str, Any]) -> list[str]:
    evaluator = searched.get("evaluator", "supernet")
    scored = "val top-1 with inherited weights" if evaluator == "supernet" else "the space's table"
    shared = (
        f"by this driver, {searched['study_evaluated']} in the shared study "
        if "study_evaluated" in searched
        else ""
    )
    return [
        "## Search",
        "",
        f"- strategy `{searched['strategy']}`, scored by {scored}; objectives: accuracy up, "
        f"{', '.join(searched['objectives'])} down",
        f"- {searched['evaluated']} candidates evaluated of a budget of {searched['budget']} "
        f"{shared}({searched['rejected']} proposals rejected by the constraints, "
        f"{searched['duplicates']} duplicates answered from the archive, {searched['failed']} failed trials)",
        hypervolume_line(searched),
        f"- study `{searched['study']}` in `{searched['storage']}`; every candidate in `archive.parquet`",
        "",
    ]


def filter_lines(filtered: dict[str, Any]) -> list[str]:
    """Per block, how many rank tuples the filter stage kept."""
    lines = [
        "## Candidate filtering",
        "",
        f"One local supernet per block; kept {filtered['kept']} of {filtered['candidates']} "
        f"rank tuples (rule: {filtered['rule']}); every tuple in `filter/candidates.parquet`.",
        "",
        "| block | kept | non-dominated | full-rank val top-1 % | smallest kept MFLOPs (model, other blocks dense) |",
        "|---|---|---|---|---|",
    ]
    for block in filtered["blocks"]:
        lines.append(
            f"| {block['unit']} | {block['kept']} of {block['candidates']} | {block['front']} | "
            f"{block['full_val_top1']:.2f} | {block['smallest_kept_flops'] / 1e6:.2f} |"
        )
    return lines + ["", "![filtered tuples](filter/candidates.png)", ""]


def training_lines(stage: str, trained: dict[str, Any]) -> list[str]:
    last = trained["history"][-1]
    probes = ", ".join(
        f"{k.removeprefix('val_top1_')} {v:.1f}%"
        for k, v in last.items()
        if k.startswith("val_top1_") and not k.endswith("mean")
    )
    lines = [
        f"## Stage `{stage}`",
        "",
        f"- {trained['epochs']} epochs, checkpoint `{trained['checkpoint']}`",
    ]
    if probes:
        lines.append(f"- val top-1 after the last epoch: {probes}")
    else:  # mixed (selector) training reads no val
        line = f"- train top-1 in the last epoch: {last.get('train_top1', float('nan')):.1f}%"
        if "selector_loss" in last:
            line += f", selector loss {last['selector_loss']:.4f}"
        lines.append(line)
    return lines + [""]


STUDY_ROWS = 50  # candidates listed in the study section; the rest are counted


def study_lines(config: RaynasConfig, searched: dict[str, Any], run_dir: Any) -> list[str]:
    """The whole study in `search.storage`, read now: every driver's evaluated candidates
    (a shared study), per driver how many. One line instead when it cannot be read."""
    import socket

    import optuna

    from orchestrator.search.searcher import driver_label
    from orchestrator.stages.search import open_study, study_summary

    name = searched["study"]
    lines = [f"## Study `{name}` (every driver)", ""]
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=name, storage=open_study(config))
        summary = study_summary(study.get_trials(deepcopy=False))
    except Exception as exc:  # unreachable, password not exported, study gone: say so
        first = (str(exc).strip().splitlines() or [""])[0]
        return lines + [f"The study could not be read: {redact(first)}", ""]
    here = driver_label({"host": socket.gethostname(), "run_dir": str(run_dir)})
    drivers = summary["drivers"]
    lines += [
        f"{summary['evaluated']} candidates evaluated in the study (budget "
        f"{config.search.budget}) by {len(drivers)} driver(s), {summary['running']} being "
        f"evaluated now; `{redact(storage_url(config))}`.",
        "",
        "| driver (host:run directory) | evaluated | running |",
        "|---|---|---|",
    ]
    for label, counts in sorted(drivers.items()):
        mark = " (this run)" if label == here else ""
        lines.append(f"| {label}{mark} | {counts['evaluated']} | {counts['running']} |")
    lines += ["", "| trial | arch id | val top-1 % | MFLOPs | driver |", "|---|---|---|---|---|"]
    trials = sorted(summary["trials"], key=lambda t: t.number)
    for trial in trials[:STUDY_ROWS]:
        attrs = trial.user_attrs
        val = attrs.get("val_top1", trial.values[0] if trial.values else float("nan"))
        label = driver_label(attrs.get("raynas.driver"))
        lines.append(
            f"| {trial.number} | {attrs['arch_id']} | {val:.2f} | "
            f"{attrs.get('flops', 0) / 1e6:.2f} | {'this run' if label == here else label} |"
        )
    if len(trials) > STUDY_ROWS:
        lines.append(f"| ... | {len(trials) - STUDY_ROWS} more in the study | | | |")
    return lines + [""]


def render(
    config: RaynasConfig,
    upstream: dict[str, dict[str, Any]],
    inputs,
    study: list[str] | None = None,
) -> str:
    lines = [
        f"# raynas run `{config.name}`",
        "",
        f"method **{config.method}**, space `{config.family}/{config.space.preset or 'default'}`, "
        f"data `{config.data.name}`, seed {config.seed}",
        "",
    ]
    selection, searched, exported = (inputs.get(k) for k in ("selection", "front", "exported"))
    if selection is not None:
        lines += selection_lines(selection)
    if searched is not None and exported is not None:
        lines += exported_lines(searched, exported)
    filtered = upstream.get("filter")
    if filtered is not None:
        lines += filter_lines(filtered)
    search = upstream.get("search")
    if search is not None:
        lines += search_lines(search)
    lines += study or []
    for stage, trained in upstream.items():
        if trained.get("history"):  # a training stage's result carries its per-epoch history
            lines += training_lines(stage, trained)
    lines += ["## Open it", "", "```"] + next_commands(config) + ["```", ""]
    return "\n".join(lines)


def run(ctx: StageContext) -> dict[str, Any]:
    searched = ctx.upstream.get("search")
    study = None
    if searched is not None and ctx.config.search.storage:  # a study other drivers may share
        study = study_lines(ctx.config, searched, ctx.run_dir)
    text = render(ctx.config, ctx.upstream, ctx.inputs, study)
    path = write_text_atomic(ctx.run_dir / REPORT, text)
    ctx.tracker.client.log_artifact(ctx.run_id, str(path))
    return {"report": ctx.rel(path)}


SPEC = StageSpec(
    name=STAGE,
    run=run,
    reads=("name", "method", "seed", "data", "space", "tracking", "search.storage"),
    optional=("supernet", "selection", "front", "exported"),
    writes=(REPORT,),
    always=True,
    describe="write report.md",
)
