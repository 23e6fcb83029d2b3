"""The `raynas` command line.

Errors a user can cause end in `error: ...` lines on stderr and exit code 1; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import __version__
from orchestrator.cluster_cli import cluster_app
from orchestrator.errors import ConfigError, UserInputError

app = typer.Typer(
    name="raynas",
    help="Ray-native one-shot neural architecture search: AutoFormer, TAS-LoRA, FLORA, IT-NAS.\n\n"
    "Start with `raynas validate CONFIG`, then `raynas run CONFIG`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
data_app = typer.Typer(help="List, inspect and convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(cluster_app, name="cluster")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"raynas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config value, e.g. `-s search.budget=20`.",
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also show Ray's and the libraries' logs on the console (they always go to "
        "RUN_DIR/raynas.log).",
    ),
]


def _route_logs(cfg, verbose: bool) -> None:
    """Library logs and Ray worker output to RUN_DIR/raynas.log (and the console with -v)."""
    from orchestrator.console import setup_logging

    setup_logging(cfg.workspace, verbose)


# ---------------------------------------------------------------------------------- validate
@app.command()
def validate(
    config: ConfigArg,
    set_: SetOpt = None,
    show: Annotated[
        bool, typer.Option("--print", help="Print the resolved config as YAML.")
    ] = False,
) -> None:
    """Check a run config (or a cluster spec) without running anything (exit 0 when valid)."""
    import yaml

    from orchestrator.config import load_config, read_yaml

    data = read_yaml(config)
    if "groups" in data and "method" not in data:  # a cluster spec (configs/cluster-*.yaml)
        from orchestrator.cluster_cli import summarize_spec

        out.print(f"[green]ok[/green] {config}: {summarize_spec(config, set_)}", highlight=False)
        return
    cfg = load_config(config, set_)
    space = f"{cfg.family}/{cfg.space.preset or 'default'}"
    out.print(
        f"[green]ok[/green] {config}: method {cfg.method}, space {space}, data {cfg.data.name}, "
        f"stages {' -> '.join(cfg.stage_names)}, run dir {cfg.run_path}",
        highlight=False,
    )
    if show:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# ---------------------------------------------------------------------------------- data
RootOpt = Annotated[
    str | None, typer.Option(help="Folder, file or s3:// / gs:// URI holding the data.")
]
ValSizeOpt = Annotated[
    float | None, typer.Option(help="Val carve-out: a count (>= 1) or fraction (< 1).")
]
TestSizeOpt = Annotated[
    float | None, typer.Option(help="Test carve-out for datasets without a test split.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the carve-outs.")]
ImageSizeOpt = Annotated[int | None, typer.Option(help="Resize to this square size.")]
ChannelsOpt = Annotated[int | None, typer.Option(help="Convert to 1 (grey) or 3 (RGB) channels.")]
DownloadOpt = Annotated[
    bool, typer.Option(help="Allow a download when the data is not found locally.")
]


def _data_config(name: str, **options: object):
    from pydantic import ValidationError

    from orchestrator.config.errors import format_errors
    from trainables.data import DataConfig

    values = {k: v for k, v in options.items() if v is not None}
    try:
        return DataConfig(name=name, **values)
    except ValidationError as exc:
        problems = [f"data.{line}" for line in format_errors(exc, DataConfig)]
        raise ConfigError("command line", problems) from None


@data_app.command("list")
def data_list() -> None:
    """List the registered datasets."""
    from trainables.data import get_source, list_datasets

    table = Table("name", "description", "default val", "test split", box=None)
    for name in list_datasets():
        source = get_source(name)
        table.add_row(
            name,
            source.description,
            f"{source.default_val_size:g}",
            "own" if source.has_test_split else f"carved ({source.default_test_size:g})",
        )
    out.print(table)


@data_app.command("inspect")
def data_inspect(
    name: Annotated[
        str | None, typer.Argument(help="Dataset name (see `raynas data list`).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Take the data section of this run config.")
    ] = None,
    root: RootOpt = None,
    val_size: ValSizeOpt = None,
    test_size: TestSizeOpt = None,
    split_seed: SeedOpt = 0,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    download: DownloadOpt = True,
) -> None:
    """Load a dataset and print its split sizes, image shape, classes and statistics."""
    import time

    from trainables.data import load_splits

    if config is not None:
        if name is not None:
            raise ConfigError("command line", ["give a dataset NAME or --config, not both"])
        from orchestrator.config import load_config

        data_cfg = load_config(config).data
    elif name is None:
        raise ConfigError(
            "command line", ["give a dataset NAME (see `raynas data list`) or --config"]
        )
    else:
        data_cfg = _data_config(
            name, root=root, val_size=val_size, test_size=test_size, split_seed=split_seed,
            image_size=image_size, channels=channels, download=download,
        )  # fmt: skip
    start = time.perf_counter()
    with err.status(f"loading {data_cfg.name} ..."):
        splits = load_splits(data_cfg, purpose="inspect")
    seconds = time.perf_counter() - start
    table = Table("split", "images", box=None)
    for split, size in splits.sizes().items():
        table.add_row(split, str(size))
    c, h, w = splits.image_shape
    out.print(
        f"[bold]{splits.name}[/bold] from {splits.origin} (loaded in {seconds:.1f} s)",
        highlight=False,
    )
    out.print(table)
    classes = ", ".join(splits.classes[:12]) + (", ..." if splits.num_classes > 12 else "")
    out.print(f"image shape: {c}x{h}x{w} (CxHxW)", highlight=False)
    out.print(f"classes: {splits.num_classes} ({classes})", highlight=False)
    out.print(
        f"normalisation: mean {[round(m, 4) for m in splits.mean]}, std {[round(s, 4) for s in splits.std]}",
        highlight=False,
    )


@data_app.command("convert")
def data_convert(
    name: Annotated[str, typer.Argument(help="Dataset name (see `raynas data list`).")],
    output: Annotated[str, typer.Argument(help="Output folder (local path or s3:// / gs:// URI).")],
    root: RootOpt = None,
    test_size: TestSizeOpt = None,
    split_seed: SeedOpt = 0,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    download: DownloadOpt = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Write a dataset as parquet (train.parquet + test.parquet, raw uint8 pixels).

    Read it back with `data: {name: parquet, root: OUTPUT}`; the val carve-out with the same
    split seed selects the same images as from the original dataset.
    """
    from trainables.data.convert import convert

    data_cfg = _data_config(
        name, root=root, test_size=test_size, split_seed=split_seed,
        image_size=image_size, channels=channels, download=download,
    )  # fmt: skip
    with err.status(f"converting {name} ..."):
        rows = convert(data_cfg, output, overwrite=overwrite)
    out.print(
        f"wrote {output}: train.parquet ({rows['train']} rows), test.parquet ({rows['test']} rows)"
    )
    out.print(f"use it with  data: {{name: parquet, root: {output}}}", highlight=False)


# ---------------------------------------------------------------------------------- stages
# a str, not a Path: Path("s3://bucket/run") would collapse the URI's "//"
RunDirArg = Annotated[
    str, typer.Argument(help="Run directory (a path or an s3:// / gs:// URI).", show_default=False)
]


def _print_selection(selection: dict) -> None:
    """The selected cell, each edge's importances (the chosen op first) and its table reading."""
    out.print(f"selected cell: {selection['text']}", highlight=False)
    for name, scores in selection["scores"].items():
        labels = selection["labels"][name]
        table = Table("edge", *labels["ops"], box=None, title=f"importances ({name})",
                      title_justify="left")  # fmt: skip
        for edge, row in zip(labels["edges"], scores, strict=True):
            top = max(range(len(row)), key=row.__getitem__)
            table.add_row(
                edge,
                *(f"[bold]{v:.3f}[/bold]" if j == top else f"{v:.3f}" for j, v in enumerate(row)),
            )
        out.print(table)
    found = selection.get("table")
    if found:
        out.print(
            f"{found['name']}: {found['accuracy']:.2f}% CIFAR-10, percentile "
            f"{found['percentile']:.1f} (a transfer proxy on other data)",
            highlight=False,
        )


def _print_pareto(cfg) -> None:
    """The selected cell (IT-NAS), the exported models and the commands that open the run."""
    from orchestrator.stage import read_result
    from orchestrator.stages.report import TABLE_HEADER, next_commands, pareto_table

    selection = read_result(cfg.workspace, "select") if "select" in cfg.stage_names else None
    if selection is not None:
        _print_selection(selection)
    summary = read_result(cfg.workspace, "export")
    if summary is not None:
        title = "Retrained model" if "retrain" in cfg.stage_names else "Pareto subnets"
        reference = summary.get("reference")
        header = ["arch id", "params (M)", "MFLOPs", "val %", "test %"]
        if reference:  # a compression search: each model against the dense one it started from
            header += ["MACs cut", "vs dense"]
        table = Table(box=None, title=title, title_justify="left")
        for name in header:
            table.add_column(name, no_wrap=True)
        wide = out.width >= 140  # the arch text is in report.md; a narrow terminal drops it
        if wide:
            table.add_column(TABLE_HEADER[-1], no_wrap=True, overflow="ellipsis", max_width=48)
        models = sorted(summary["models"], key=lambda m: m["flops"])
        for model, row in zip(models, pareto_table(summary["models"]), strict=True):
            extra = []
            if reference:
                extra = [
                    f"{100 * (1 - model['flops'] / reference['flops']):.1f}%",
                    f"{model['test_top1'] - reference['test_top1']:+.2f}",
                ]
            table.add_row(*row[:-1], *extra, *row[-1:][:wide])
        if reference:
            table.add_row(
                "dense",
                f"{reference['params'] / 1e6:.3f}",
                f"{reference['flops'] / 1e6:.2f}",
                f"{reference['val_top1']:.2f}",
                f"{reference['test_top1']:.2f}",
                "0.0%",
                "+0.00",
                *["the dense model (pretrain)"][:wide],
            )
        out.print(table)
    out.print(f"run directory: {cfg.run_path if cfg.remote else cfg.workspace}", highlight=False)
    for command in next_commands(cfg):
        out.print(f"next: {command}", highlight=False)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (YAML).", show_default=False)
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue the interrupted run in this directory or object-store URI "
            "(its config.yaml)."
        ),
    ] = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the whole pipeline of a config's method (supernet -> search -> export -> report).

    Finished stages are skipped; an interrupted search continues from its study and archive.
    Connects to the Ray cluster in `ray.address` or `$RAY_ADDRESS` (as under `ray job submit`),
    else starts a local one.
    """
    from orchestrator.pipeline import load_run_config, run_pipeline

    cfg = load_run_config(config, resume, set_)
    _route_logs(cfg, verbose)
    run_pipeline(cfg)
    out.print()
    _print_pareto(cfg)


@app.command()
def train(config: ConfigArg, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Train the weight-sharing supernet (the `supernet` stage) alone.

    Rerunning it resumes from the latest checkpoint in the run directory.
    """
    from orchestrator.config import load_config
    from orchestrator.pipeline import run_stages
    from orchestrator.secrets import redact
    from orchestrator.tracking import tracking_uri

    cfg = load_config(config, set_)
    _route_logs(cfg, verbose)
    outcome = run_stages(cfg, only=["supernet"])["supernet"]
    path = cfg.workspace
    last = outcome["history"][-1]
    table = Table("subnet", "val top-1 %", box=None)
    for key, value in last.items():
        if key.startswith("val_top1_"):
            table.add_row(key.removeprefix("val_top1_"), f"{value:.2f}")
    out.print(
        f"supernet trained for {outcome['epochs']} epochs; checkpoint {outcome['checkpoint']}",
        highlight=False,
    )
    out.print(table)
    uri = redact(tracking_uri(cfg.tracking.uri, str(path)))
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
    out.print(f"next: {ui}", highlight=False)


@app.command()
def search(
    config: ConfigArg,
    supernet: Annotated[
        Path | None,
        typer.Option(help="Supernet checkpoint folder, supernet.pt, or a run directory."),
    ] = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Search subnets of a trained supernet (the `search` stage) alone.

    Without --supernet it uses the supernet trained in the config's run directory. Rerunning
    continues the study; `search.budget` counts evaluated candidates.
    """
    from orchestrator.config import load_config
    from orchestrator.pipeline import run_stages
    from orchestrator.secrets import redact
    from orchestrator.stages.search import external_checkpoint, storage_url

    cfg = load_config(config, set_)
    _route_logs(cfg, verbose)
    given = {"supernet": external_checkpoint(supernet)} if supernet is not None else None
    outcome = run_stages(cfg, only=["search"], inputs=given)["search"]
    out.print(
        f"{outcome['evaluated']} candidates evaluated; Pareto front of {outcome['front_size']} in "
        f"{cfg.workspace / 'pareto.parquet'}",
        highlight=False,
    )
    out.print(f"next: raynas export {cfg.run_path}", highlight=False)
    out.print(f"next: optuna-dashboard {redact(storage_url(cfg))} --port 8080", highlight=False)


@app.command()
def export(run_dir: RunDirArg, verbose: VerboseOpt = False) -> None:
    """Measure test top-1 of the Pareto subnets and export them as timm models (+ report.md)."""
    from orchestrator.pipeline import config_for_resume, run_stages

    cfg = config_for_resume(run_dir)
    _route_logs(cfg, verbose)
    run_stages(cfg, only=["export", "report"])
    _print_pareto(cfg)


@app.command()
def report(run_dir: RunDirArg) -> None:
    """Write report.md for a run directory whose search and export have completed."""
    from orchestrator.pipeline import config_for_resume, run_stages

    cfg = config_for_resume(run_dir)
    outcome = run_stages(cfg, only=["report"])["report"]
    out.print(f"wrote {cfg.workspace / outcome['report']}", highlight=False)


# ---------------------------------------------------------------------------------- analyze
analyze_app = typer.Typer(help="Analyses of a finished run directory.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("collapse")
def analyze_collapse(
    run_dir: RunDirArg,
    subnets: Annotated[
        int, typer.Option(help="Subnets compared (smallest, largest and random draws).")
    ] = 8,
    probe: Annotated[int, typer.Option(help="Val images the features are taken on.")] = 512,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the subnet draws (default: the run's seed).")
    ] = None,
    supernet: Annotated[
        Path | None,
        typer.Option(help="Supernet checkpoint folder, supernet.pt, or a run directory."),
    ] = None,
) -> None:
    """Feature collapse: pairwise linear CKA (and cosine where widths match) of the pre-logits
    features of sampled subnets on a fixed probe set of val images.

    Writes `RUN_DIR/analysis/collapse/cka.json` and `cka.png` and logs them to a nested MLflow
    run `analyze-collapse`. Needs no Ray.
    """
    from orchestrator.analysis.collapse import analyze_collapse as analyze

    with err.status(f"computing features of {subnets} subnets on {probe} val images ..."):
        result = analyze(run_dir, subnets=subnets, probe=probe, seed=seed, supernet=supernet)

    def shown(value: float | None) -> str:
        return "n/a (no two subnets of equal width)" if value is None else f"{value:.4f}"

    out.print(
        f"{len(result['arch_ids'])} subnets of {result['run_name']} on {probe} val images "
        f"({result['supernet']['class']}, {result['supernet']['checkpoint']})",
        highlight=False,
    )
    out.print(f"mean off-diagonal linear CKA: {shown(result['mean_cka'])}", highlight=False)
    out.print(f"mean off-diagonal cosine:     {shown(result['mean_cosine'])}", highlight=False)
    out.print(f"wrote {result['path']} (cka.json, cka.png)", highlight=False)


@analyze_app.command("ranking")
def analyze_ranking(
    run_dir: RunDirArg,
    subnets: Annotated[
        int,
        typer.Option(help="Subnets trained from scratch (half Pareto front, half space)."),
    ] = 8,
    epochs: Annotated[int, typer.Option(help="Epochs each subnet is trained from scratch.")] = 5,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the subnet draws and the bootstrap (default: the run's)."),
    ] = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Ranking fidelity: Kendall tau (and Spearman rho) between the supernet's inherited val
    top-1 and the val top-1 of the same subnets trained from scratch, with 95% bootstrap
    intervals.

    Each subnet is one Ray Tune trial (resources: `analysis.ranking.resources`, e.g.
    `-s analysis.ranking.resources.workers=4`). Rerunning continues: finished subnets are kept,
    unfinished ones resume from their last epoch. Writes `RUN_DIR/analysis/ranking/ranking.json`
    and `ranking.png` and logs them to a nested MLflow run `analyze-ranking`.
    """
    from orchestrator.analysis.ranking import analyze_ranking as analyze

    result = analyze(
        run_dir, subnets=subnets, epochs=epochs, seed=seed, overrides=set_, verbose=verbose
    )
    stats = result["statistics"]

    def shown(name: str) -> str:
        value, (low, high) = stats[name], stats[f"{name}_interval"]
        if value is None:
            return "undefined (every subnet scored the same on one side)"
        if low is None:
            return f"{value:.3f}"
        return f"{value:.3f}  (95% bootstrap interval {low:.3f} .. {high:.3f})"

    table = Table("arch id", "from", "MFLOPs", "inherited %", "stand-alone %", box=None)
    for row in result["rows"]:
        table.add_row(
            row["arch_id"], row["source"], f"{row['flops'] / 1e6:.2f}",
            f"{row['inherited_val_top1']:.2f}", f"{row['standalone_val_top1']:.2f}",
        )  # fmt: skip
    out.print(table)
    out.print(
        f"{len(result['rows'])} subnets of {result['run_name']}, trained from scratch for "
        f"{result['epochs']} epoch(s) ({len(result['trained'])} now); val top-1, inherited vs "
        "stand-alone:",
        highlight=False,
    )
    out.print(f"Kendall tau:  {shown('kendall_tau')}", highlight=False)
    out.print(f"Spearman rho: {shown('spearman_rho')}", highlight=False)
    out.print(f"plot: {Path(result['path']) / 'ranking.png'}", highlight=False)
    out.print(f"wrote {result['path']} (ranking.json, ranking.png)", highlight=False)


def main() -> None:
    from orchestrator.errors import Terminated
    from orchestrator.secrets import redact

    try:
        app()
    except UserInputError as exc:
        for line in str(exc).splitlines():
            err.print(f"error: {redact(line)}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except BaseException as exc:
        # typer ends every command with SystemExit: only a run that imported the runtime (which
        # installs the SIGTERM handler) can have received one, so --help never imports torch
        runtime = sys.modules.get("orchestrator.runtime")
        received = runtime is not None and runtime.sigterm_received()
        # inside Ray's C code the interrupt can surface wrapped (e.g. as a SystemError)
        if not (isinstance(exc, Terminated) or received):
            raise
        err.print(
            "stopped by SIGTERM; continue with `raynas run --resume RUN_DIR`", highlight=False
        )
        sys.exit(143)


if __name__ == "__main__":
    main()
